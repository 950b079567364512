"""Quantizer math (``reference``: the specification; ``formats``: what each weight format's codes mean; ``grids``:
the rounding behind both) and the packed bit layout (``packing``)."""

from xtc_ds.quant.reference import (
    binarize,
    dequantize_weight,
    fake_quant_activation,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    fake_quant_weight,
    quantize_weight,
    ternarize,
)

__all__ = [
    "binarize",
    "ternarize",
    "fake_quant_symmetric",
    "fake_quant_asymmetric",
    "fake_quant_weight",
    "fake_quant_activation",
    "quantize_weight",
    "dequantize_weight",
]
