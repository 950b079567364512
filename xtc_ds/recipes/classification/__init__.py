"""The packaged XTC recipe for text classification (GLUE): teacher fine-tuning, compressed student, export.

``launch/train.py`` runs it; it uses only the public library (``xtc_ds.initialize``, ``export_packed``, ...) plus
the checkpoint and file helpers of the core.
"""
