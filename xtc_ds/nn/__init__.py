"""Compressing modules: fake-quantizers and the QAT layers that carry them."""

from xtc_ds.nn.fake_quant import ActFakeQuantizer, WeightFakeQuantizer
from xtc_ds.nn.packed_embedding import XtcPackedEmbedding
from xtc_ds.nn.packed_linear import XtcPackedLinear
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.nn.qat_embedding import XtcQATEmbedding
from xtc_ds.nn.qat_linear import XtcQATConv1D, XtcQATLinear

__all__ = [
    "WeightFakeQuantizer",
    "ActFakeQuantizer",
    "XtcQATLinear",
    "XtcQATConv1D",
    "XtcQATEmbedding",
    "PackedSpec",
    "XtcPackedLinear",
    "XtcPackedEmbedding",
]
