"""Quantizer math (``reference``) and its straight-through autograd wrapper (``ste``)."""

from xtc_ds.quant.reference import (
    binarize,
    fake_quant_activation,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    fake_quant_weight,
    ternarize,
)
from xtc_ds.quant.ste import straight_through

__all__ = [
    "binarize",
    "ternarize",
    "fake_quant_symmetric",
    "fake_quant_asymmetric",
    "fake_quant_weight",
    "fake_quant_activation",
    "straight_through",
]
