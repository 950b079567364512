"""Pure-PyTorch quantizer math: the specification every fused kernel must match.

There is one quantizer, :func:`quantize_weight` (integer codes and scales, what a packed checkpoint
stores); fake quantization is its dequantization, so QAT and export cannot drift apart. Activations use the
same grid functions per token. All functions are plain tensor math without autograd tricks (the ops in
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

from typing import NamedTuple, Optional, Union

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


def _round(x: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Round a temporary in place (to nearest, ties to even; or stochastically: floor(x + U[0, 1)))."""
    return x.add_(torch.rand_like(x)).floor_() if stochastic else x.round_()


class _Grid(NamedTuple):
    """Rows on a quantization grid: integer-valued float ``codes`` whose level is ``step * code - offset``.

    The value of a code is ``level * scale``; ``offset`` is a float or a per-row zero point.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: Union[torch.Tensor, float]
    step: float = 1.0

    def values(self) -> torch.Tensor:
        codes = self.codes if self.step == 1.0 else self.codes * self.step
        return (codes - self.offset) * self.scale


def _binary(rows: torch.Tensor) -> _Grid:
    """Codes 1 for ``w >= 0`` and 0 otherwise (levels +1/-1, so sign(0) = +1), scale ``mean|w|``."""
    return _Grid((rows >= 0).float(), _mean(rows.abs()), 1.0, step=2.0)


def _ternary(rows: torch.Tensor) -> _Grid:
    """TWN: levels -1/0/+1 (kept where ``|w| > 0.7 * mean|w|``) stored as codes 0/1/2, scale = mean kept ``|w|``."""
    magnitude = rows.abs()
    keep = magnitude > TERNARY_THRESHOLD * _mean(magnitude)
    kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
    scale = ((magnitude * keep).sum(dim=1, keepdim=True, dtype=torch.float64) / kept).float()
    return _Grid(torch.sign(rows).mul_(keep).add_(1), scale, 1.0)


def _symmetric(rows: torch.Tensor, bits: int, stochastic: bool, amax: Optional[torch.Tensor] = None) -> _Grid:
    """Levels in ``[-(2^(b-1)-1), 2^(b-1)-1]`` stored as codes ``level + 2^(b-1)``; scale ``max|x| / (2^(b-1)-1)``."""
    q_max = 2 ** (bits - 1) - 1
    if amax is None:
        low, high = torch.aminmax(rows, dim=1, keepdim=True)  # one pass, no |x| temporary
        amax = torch.maximum(-low, high)
    scale = (amax / q_max).clamp_min(_TINY)
    return _Grid(_round(rows / scale, stochastic).clamp_(-q_max, q_max).add_(q_max + 1), scale, float(q_max + 1))


def _asymmetric(
    rows: torch.Tensor,
    bits: int,
    stochastic: bool,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> _Grid:
    """Codes ``0 .. 2^b-1`` with an integer zero point over ``[min(x, 0), max(x, 0)]`` (so zero stays exact)."""
    q_max = 2**bits - 1
    if x_min is None or x_max is None:
        x_min, x_max = torch.aminmax(rows, dim=1, keepdim=True)
    x_min, x_max = torch.clamp(x_min, max=0.0), torch.clamp(x_max, min=0.0)
    scale = ((x_max - x_min) / q_max).clamp_min(_TINY)
    zero_point = torch.round(-x_min / scale)
    return _Grid(_round(rows / scale, stochastic).add_(zero_point).clamp_(0, q_max), scale, zero_point)


def _weight_grid(w: torch.Tensor, bits: int, symmetric: bool, stochastic: bool) -> _Grid:
    if bits == 1:
        return _binary(w)
    if bits == 2:
        return _ternary(w)
    if not 3 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    return _symmetric(w, bits, stochastic) if symmetric else _asymmetric(w, bits, stochastic)


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
    return _symmetric(rows, bits, stochastic, amax).values()


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
    return _asymmetric(rows, bits, stochastic, x_min, x_max).values()


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
        grid = _symmetric(rows, bits, False, amax)
    else:
        grid = _asymmetric(rows, bits, False, x_min, x_max)
    return grid.values().reshape(x.shape).to(x.dtype)


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
    grid = _weight_grid(_grouped(weight, num_groups), bits, symmetric, stochastic)
    zero_point = grid.offset.reshape(num_groups) if isinstance(grid.offset, torch.Tensor) else None
    return QuantizedWeight(
        grid.codes.to(torch.uint8).reshape(weight.shape), grid.scale.reshape(num_groups), zero_point
    )


def dequantize_weight(quantized: QuantizedWeight, bits: int) -> torch.Tensor:
    """float32 weight of ``quantized.codes``' shape: the inverse of :func:`quantize_weight` (same grid)."""
    num_groups = quantized.weight_scale.numel()
    codes = quantized.codes.reshape(num_groups, -1).float()
    scale = quantized.weight_scale.reshape(num_groups, 1).float()
    if bits == 1:
        grid = _Grid(codes, scale, 1.0, step=2.0)
    elif bits == 2:
        grid = _Grid(codes, scale, 1.0)
    elif quantized.weight_zero_point is not None:
        grid = _Grid(codes, scale, quantized.weight_zero_point.reshape(num_groups, 1).float())
    else:
        grid = _Grid(codes, scale, float(2 ** (bits - 1)))
    return grid.values().reshape(quantized.codes.shape)
