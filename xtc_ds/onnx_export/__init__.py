"""ONNX export: :func:`export_onnx` writes a compressed classifier as an ONNX Runtime folder whose 1/2-bit
Linears are ``MatMulNBits`` nodes or int8 ``MatMulIntegerToFloat`` ones rebuilt at load from their codes;
:class:`OnnxClassifier` runs such a folder.

``ops`` (the contrib ops as PyTorch custom ops and their ONNX translations), ``mapping`` (packed tensors <-> op
initializers), ``modules`` (export-time modules), ``export`` and ``session`` each do one job. Needs the ``[onnx]``
extra.
"""

from xtc_ds.onnx_export.export import export_onnx
from xtc_ds.onnx_export.session import OnnxClassifier, missing_onnx_packages, onnxruntime_available

__all__ = ["export_onnx", "OnnxClassifier", "onnxruntime_available", "missing_onnx_packages"]
