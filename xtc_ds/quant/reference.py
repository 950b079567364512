"""Pure-PyTorch quantizer math: the specification every fused kernel must match.

There is one quantizer, :func:`quantize_weight` (integer codes and scales, what a packed checkpoint
stores); fake quantization is its dequantization, so QAT and export cannot drift apart. Activations use the
same grids (:mod:`xtc_ds.quant.grids`) per token; what each weight format's codes mean is
:mod:`xtc_ds.quant.formats`. All functions are plain tensor math without autograd tricks (the ops in
``xtc_ds.ops`` add the straight-through gradient). They compute in float32 and return the input's dtype, so
fp16/bf16 weights get the same levels as fp32 ones.

Grouping follows the legacy DeepSpeed library: a weight is flattened row-major and split into
``num_groups`` contiguous groups (``num_groups == out_features`` is per-row); activations are
quantized per token (each row of the last dimension is a group) or with one static range. Group means are
accumulated in float64 and rounded to float32, so the result does not depend on summation order and a fused
kernel can match it bit for bit.

Deliberate differences from the legacy library (see docs/CONFIG.md, "Differences from DeepSpeed's library"):
binary maps exact zeros to ``+alpha`` so there are exactly two levels; symmetric ``b``-bit uses the
restricted range ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``scale = max|x| / (2^(b-1)-1)`` so the largest
magnitude is representable (legacy clipped it); asymmetric uses ``(max-min) / (2^b-1)`` (legacy divided
by ``2^b`` and wasted a level).
"""

from __future__ import annotations

from typing import Optional

import torch

from xtc_ds.quant.formats import QuantizedWeight, storage_bits, weight_format
from xtc_ds.quant.grids import TERNARY_THRESHOLD, asymmetric_grid, symmetric_grid

__all__ = [
    "TERNARY_THRESHOLD",
    "binarize",
    "ternarize",
    "fake_quant_symmetric",
    "fake_quant_asymmetric",
    "fake_quant_weight",
    "fake_quant_activation",
    "QuantizedWeight",
    "storage_bits",
    "quantize_weight",
    "dequantize_weight",
]


def binarize(weight: torch.Tensor, num_groups: int = 1) -> torch.Tensor:
    """``sign(W) * mean|W|`` per group with ``sign(0) = +1``: :func:`fake_quant_weight` at 1 bit.

    Returns:
        Tensor of ``weight``'s shape and dtype holding exactly ``{-alpha_g, +alpha_g}`` per group.
    """
    return fake_quant_weight(weight, 1, num_groups)


def ternarize(weight: torch.Tensor, num_groups: int = 1) -> torch.Tensor:
    """TWN ternarization (``Delta = 0.7 * mean|W|``, ``alpha`` = mean of the kept ``|W|``): 2-bit weights.

    Returns:
        Tensor of ``weight``'s shape and dtype with values in ``{-alpha_g, 0, +alpha_g}``.
    """
    return fake_quant_weight(weight, 2, num_groups)


def fake_quant_symmetric(
    rows: torch.Tensor, bits: int, stochastic: bool = False, amax: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Symmetric ``bits``-bit fake quantization of each row of a 2-D float32 tensor.

    Args:
        rows: ``(R, N)`` float32; each row has its own scale unless ``amax`` is given.
        bits: 2..8.
        stochastic: round stochastically instead of to nearest.
        amax: optional fixed range (broadcastable to ``(R, 1)``), e.g. a static activation range.
    Returns:
        ``(R, N)`` float32 on the grid ``scale * [-(2^(bits-1)-1) .. 2^(bits-1)-1]``.
    """
    return symmetric_grid(rows, bits, stochastic, amax).values()


def fake_quant_asymmetric(
    rows: torch.Tensor,
    bits: int,
    stochastic: bool = False,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Asymmetric ``bits``-bit fake quantization (scale and integer zero point) of each row.

    Args:
        rows: ``(R, N)`` float32.
        bits: 2..8; codes are ``0 .. 2^bits - 1``.
        stochastic: round stochastically instead of to nearest.
        x_min, x_max: optional fixed range; per-row min/max otherwise.
    Returns:
        ``(R, N)`` float32 dequantized values.
    """
    return asymmetric_grid(rows, bits, stochastic, x_min, x_max).values()


def fake_quant_weight(
    weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True, stochastic: bool = False
) -> torch.Tensor:
    """Fake-quantize a weight: ``dequantize_weight(quantize_weight(weight))`` (1 bit binary, 2 ternary).

    Args:
        weight: ``(out_features, in_features)`` (or any shape), flattened into ``num_groups`` groups.
        bits: 1..8.
        num_groups: number of contiguous groups, each with its own scale.
        symmetric: uniform grid without zero point (3..8 bits; 1 and 2 bits are always symmetric).
        stochastic: stochastic rounding (3..8 bits).
    Returns:
        Tensor of ``weight``'s shape and dtype.
    """
    quantized = quantize_weight(weight, bits, num_groups, symmetric, stochastic)
    return dequantize_weight(quantized, bits).to(weight.dtype)


def fake_quant_activation(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fake-quantize activations per token (dynamic) or with one static range.

    Args:
        x: ``(..., features)``; each token (row of the last dimension) is one group when no range is given.
        bits: 2..8 (the config allows 4 and 8).
        symmetric: symmetric grid, or asymmetric with zero point.
        x_min, x_max: scalar tensors of a static range (both or neither).
    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    rows = x.reshape(-1, x.shape[-1]).float()
    if symmetric:
        amax = None if x_max is None else torch.maximum(x_min.abs(), x_max.abs())
        grid = symmetric_grid(rows, bits, False, amax)
    else:
        grid = asymmetric_grid(rows, bits, False, x_min, x_max)
    return grid.values().reshape(x.shape).to(x.dtype)


def quantize_weight(
    weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True, stochastic: bool = False
) -> QuantizedWeight:
    """THE weight quantizer: codes and scales (and zero points) of ``weight`` per contiguous group.

    Args:
        weight: any shape, flattened into ``num_groups`` contiguous groups.
        bits: 1..8 (1 and 2 bits are always symmetric).
        num_groups: number of scales.
        symmetric: 3..8-bit grid without zero point.
        stochastic: stochastic rounding (3..8 bits; QAT only, export rounds to nearest).
    Returns:
        :class:`QuantizedWeight` with ``codes`` of ``weight``'s shape.
    """
    return weight_format(bits, symmetric).quantize(weight, num_groups, stochastic)


def dequantize_weight(quantized: QuantizedWeight, bits: int) -> torch.Tensor:
    """float32 weight of ``quantized.codes``' shape: the inverse of :func:`quantize_weight` (same grid)."""
    return weight_format(bits, symmetric=quantized.weight_zero_point is None).dequantize(quantized)
