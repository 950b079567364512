"""Pure-PyTorch quantizer math: the specification every fused kernel must match.

All functions are plain tensor math without autograd tricks; ``ste.py`` adds the straight-through
gradient. They compute in float32 and return the input's dtype, so fp16/bf16 weights get the same
levels as fp32 ones.

Grouping follows the legacy DeepSpeed library: a weight is flattened row-major and split into
``num_groups`` contiguous groups (``num_groups == out_features`` is per-row); activations are
quantized per token (each row of the last dimension is a group) or with one static range. Group means are
accumulated in float64 and rounded to float32, so the result does not depend on summation order and a fused
kernel can match it bit for bit.

Deliberate differences from the legacy library (see README, "Differences from DeepSpeed"):
binary maps exact zeros to ``+alpha`` so there are exactly two levels; symmetric ``b``-bit uses the
restricted range ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``scale = max|x| / (2^(b-1)-1)`` so the largest
magnitude is representable (legacy clipped it); asymmetric uses ``(max-min) / (2^b-1)`` (legacy divided
by ``2^b`` and wasted a level).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

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

TERNARY_THRESHOLD = 0.7
_TINY = torch.finfo(torch.float32).tiny


def _grouped(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``x`` as float32 of shape ``(num_groups, numel // num_groups)``; groups are contiguous."""
    if num_groups < 1 or x.numel() % num_groups:
        raise ValueError(
            f"cannot split a tensor of {x.numel()} elements {tuple(x.shape)} into {num_groups} equal groups"
        )
    return x.reshape(num_groups, -1).float()


def _mean(rows: torch.Tensor) -> torch.Tensor:
    """Row means accumulated in float64, then rounded to float32: exact, so no summation order can differ."""
    return rows.sum(dim=1, keepdim=True, dtype=torch.float64).div_(rows.shape[1]).float()


def _round_(x: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Round a temporary in place (to nearest, or stochastically: floor(x + U[0, 1)))."""
    return x.add_(torch.rand_like(x)).floor_() if stochastic else x.round_()


def binarize(weight: torch.Tensor, num_groups: int = 1) -> torch.Tensor:
    """``sign(W) * mean|W|`` per group, with ``sign(0) = +1``.

    Args:
        weight: any shape; flattened into ``num_groups`` contiguous groups.
        num_groups: number of scales.
    Returns:
        Tensor of ``weight``'s shape and dtype holding exactly ``{-alpha_g, +alpha_g}`` per group.
    """
    w = _grouped(weight, num_groups)
    alpha = _mean(w.abs())
    return torch.where(w >= 0, alpha, -alpha).reshape(weight.shape).to(weight.dtype)


def ternarize(weight: torch.Tensor, num_groups: int = 1) -> torch.Tensor:
    """TWN ternarization: ``Delta = 0.7 * mean|W|``; ``alpha = mean(|W| where |W| > Delta)`` per group.

    Returns:
        Tensor of ``weight``'s shape and dtype with values in ``{-alpha_g, 0, +alpha_g}``.
    """
    w = _grouped(weight, num_groups)
    magnitude = w.abs()
    keep = magnitude > TERNARY_THRESHOLD * _mean(magnitude)
    kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
    alpha = ((magnitude * keep).sum(dim=1, keepdim=True, dtype=torch.float64) / kept).float()
    return (torch.sign(w) * keep * alpha).reshape(weight.shape).to(weight.dtype)


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
    q_max = 2 ** (bits - 1) - 1
    if amax is None:
        low, high = torch.aminmax(rows, dim=1, keepdim=True)  # one pass, no |x| temporary
        amax = torch.maximum(-low, high)
    scale = (amax / q_max).clamp_min(_TINY)
    return _round_(rows / scale, stochastic).clamp_(-q_max, q_max).mul_(scale)


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
    q_max = 2**bits - 1
    if x_min is None or x_max is None:
        x_min, x_max = torch.aminmax(rows, dim=1, keepdim=True)
    # The range must contain 0 so that zero (padding, ReLU output) stays exact.
    x_min = torch.clamp(x_min, max=0.0)
    x_max = torch.clamp(x_max, min=0.0)
    scale = ((x_max - x_min) / q_max).clamp_min(_TINY)
    zero_point = torch.round(-x_min / scale)
    codes = _round_(rows / scale, stochastic).add_(zero_point).clamp_(0, q_max)
    return codes.sub_(zero_point).mul_(scale)


def fake_quant_weight(
    weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True, stochastic: bool = False
) -> torch.Tensor:
    """Fake-quantize a weight: 1 bit binary, 2 bits ternary, 3..8 bits uniform (sym or asym).

    Args:
        weight: ``(out_features, in_features)`` (or any shape), flattened into ``num_groups`` groups.
        bits: 1..8.
        num_groups: number of contiguous groups, each with its own scale.
        symmetric: uniform grid without zero point (3..8 bits; 1 and 2 bits are always symmetric).
        stochastic: stochastic rounding (3..8 bits).
    Returns:
        Tensor of ``weight``'s shape and dtype.
    """
    if bits == 1:
        return binarize(weight, num_groups)
    if bits == 2:
        return ternarize(weight, num_groups)
    if not 3 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    rows = _grouped(weight, num_groups)
    out = fake_quant_symmetric(rows, bits, stochastic) if symmetric else fake_quant_asymmetric(rows, bits, stochastic)
    return out.reshape(weight.shape).to(weight.dtype)


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
        bits: 4 or 8.
        symmetric: symmetric grid, or asymmetric with zero point.
        x_min, x_max: scalar tensors of a static range (both or neither).
    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    rows = x.reshape(-1, x.shape[-1]).float()
    if symmetric:
        amax = None if x_max is None else torch.maximum(x_min.abs(), x_max.abs())
        out = fake_quant_symmetric(rows, bits, amax=amax)
    else:
        out = fake_quant_asymmetric(rows, bits, x_min=x_min, x_max=x_max)
    return out.reshape(x.shape).to(x.dtype)


class QuantizedWeight(NamedTuple):
    """Integer codes and scales of a weight: what a packed checkpoint stores.

    ``codes`` is uint8 of the weight's shape; value = ``weight_scale[g] * level(code)`` with level
    ``2*code - 1`` (binary), ``code - 1`` (ternary), ``code - 2^(bits-1)`` (symmetric) or
    ``code - weight_zero_point[g]`` (asymmetric). ``weight_scale`` is float32 ``(num_groups,)``;
    ``weight_zero_point`` is float32 ``(num_groups,)`` for asymmetric weights, else None.
    """

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: Optional[torch.Tensor]


def storage_bits(bits: int) -> int:
    """Bits per stored code: 1 and 2 as they are, 3..4 in nibbles, 5..8 in bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    return bits if bits <= 2 else (4 if bits <= 4 else 8)


def quantize_weight(weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True) -> QuantizedWeight:
    """Codes and scales whose :func:`dequantize_weight` equals :func:`fake_quant_weight` bit for bit.

    Args:
        weight: any shape, flattened into ``num_groups`` contiguous groups.
        bits: 1..8 (1 and 2 bits are always symmetric).
        num_groups: number of scales.
        symmetric: 3..8-bit grid without zero point.
    Returns:
        :class:`QuantizedWeight` with ``codes`` of ``weight``'s shape.
    """
    w = _grouped(weight, num_groups)
    zero_point = None
    if bits == 1:
        scale = _mean(w.abs())
        codes = w >= 0
    elif bits == 2:
        magnitude = w.abs()
        keep = magnitude > TERNARY_THRESHOLD * _mean(magnitude)
        kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
        scale = ((magnitude * keep).sum(dim=1, keepdim=True, dtype=torch.float64) / kept).float()
        codes = (torch.sign(w) * keep).add_(1)
    elif not 3 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    elif symmetric:
        q_max = 2 ** (bits - 1) - 1
        low, high = torch.aminmax(w, dim=1, keepdim=True)
        scale = (torch.maximum(-low, high) / q_max).clamp_min(_TINY)
        codes = (w / scale).round_().clamp_(-q_max, q_max).add_(q_max + 1)
    else:
        q_max = 2**bits - 1
        low, high = torch.aminmax(w, dim=1, keepdim=True)
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        scale = ((high - low) / q_max).clamp_min(_TINY)
        zero_point = torch.round(-low / scale)
        codes = (w / scale).round_().add_(zero_point).clamp_(0, q_max)
        zero_point = zero_point.reshape(num_groups)
    return QuantizedWeight(codes.to(torch.uint8).reshape(weight.shape), scale.reshape(num_groups), zero_point)


def dequantize_weight(quantized: QuantizedWeight, bits: int) -> torch.Tensor:
    """float32 weight of ``quantized.codes``' shape: the inverse of :func:`quantize_weight`."""
    num_groups = quantized.weight_scale.numel()
    codes = quantized.codes.reshape(num_groups, -1)
    scale = quantized.weight_scale.reshape(num_groups, 1).float()
    if bits == 1:
        values = torch.where(codes.bool(), scale, -scale)
    else:
        if bits == 2:
            offset = 1.0
        elif quantized.weight_zero_point is not None:
            offset = quantized.weight_zero_point.reshape(num_groups, 1).float()
        else:
            offset = float(2 ** (bits - 1))
        values = (codes.float() - offset) * scale
    return values.reshape(quantized.codes.shape)
