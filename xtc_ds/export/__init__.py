"""Packed export: :func:`export_packed` writes a compressed model as a packed Hugging Face folder,
:func:`load_packed` reads it back; ``python -m xtc_ds.export`` does the same from the command line.
:func:`load_cleaned` reads a cleaned (possibly pruned, smaller) model saved unpacked with ``save_pretrained``.

``gather`` (where the weights come from), ``format`` (the on-disk description both sides use), ``write`` and
``load`` each do one job.
"""

from xtc_ds.errors import PackedFormatError
from xtc_ds.export.format import FORMAT_VERSION, QUANT_METHOD, packed_specs
from xtc_ds.export.gather import checkpoint_state_dict
from xtc_ds.export.load import load_cleaned, load_packed
from xtc_ds.export.write import export_packed

__all__ = [
    "export_packed",
    "load_packed",
    "load_cleaned",
    "packed_specs",
    "checkpoint_state_dict",
    "PackedFormatError",
    "FORMAT_VERSION",
    "QUANT_METHOD",
]
