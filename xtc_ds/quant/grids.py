"""The grids behind every quantizer: rows of float32 values mapped to integer codes and scales.

A :class:`Grid` holds integer-valued float codes whose level is ``step * code - offset`` and value
``level * scale``. The weight formats (:mod:`xtc_ds.quant.formats`) and the activation quantizer
(:mod:`xtc_ds.quant.reference`) build their codes here, so both round the same way. Group means are
accumulated in float64 and rounded to float32, so the result does not depend on summation order and a fused
kernel can match it bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

__all__ = [
    "TERNARY_THRESHOLD",
    "Grid",
    "grouped",
    "row_mean",
    "binary_grid",
    "ternary_grid",
    "symmetric_grid",
    "asymmetric_grid",
]

TERNARY_THRESHOLD = 0.7
_TINY = torch.finfo(torch.float32).tiny


class Grid(NamedTuple):
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


def grouped(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``x`` as float32 of shape ``(num_groups, numel // num_groups)``; groups are contiguous."""
    if num_groups < 1 or x.numel() % num_groups:
        raise ValueError(
            f"cannot split a tensor of {x.numel()} elements {tuple(x.shape)} into {num_groups} equal groups"
        )
    return x.reshape(num_groups, -1).float()


def row_mean(rows: torch.Tensor) -> torch.Tensor:
    """Row means accumulated in float64, then rounded to float32: exact, so no summation order can differ."""
    return rows.sum(dim=1, keepdim=True, dtype=torch.float64).div_(rows.shape[1]).float()


def _round(x: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Round a temporary in place (to nearest, ties to even; or stochastically: floor(x + U[0, 1)))."""
    return x.add_(torch.rand_like(x)).floor_() if stochastic else x.round_()


def binary_grid(rows: torch.Tensor) -> Grid:
    """Codes 1 for ``w >= 0`` and 0 otherwise (levels +1/-1, so sign(0) = +1), scale ``mean|w|``."""
    return Grid((rows >= 0).float(), row_mean(rows.abs()), 1.0, step=2.0)


def ternary_grid(rows: torch.Tensor) -> Grid:
    """TWN: levels -1/0/+1 (kept where ``|w| > 0.7 * mean|w|``) stored as codes 0/1/2, scale = mean kept ``|w|``."""
    magnitude = rows.abs()
    keep = magnitude > TERNARY_THRESHOLD * row_mean(magnitude)
    kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
    scale = ((magnitude * keep).sum(dim=1, keepdim=True, dtype=torch.float64) / kept).float()
    return Grid(torch.sign(rows).mul_(keep).add_(1), scale, 1.0)


def symmetric_grid(rows: torch.Tensor, bits: int, stochastic: bool, amax: Optional[torch.Tensor] = None) -> Grid:
    """Levels in ``[-(2^(b-1)-1), 2^(b-1)-1]`` stored as codes ``level + 2^(b-1)``; scale ``max|x| / (2^(b-1)-1)``."""
    q_max = 2 ** (bits - 1) - 1
    if amax is None:
        low, high = torch.aminmax(rows, dim=1, keepdim=True)  # one pass, no |x| temporary
        amax = torch.maximum(-low, high)
    scale = (amax / q_max).clamp_min(_TINY)
    return Grid(_round(rows / scale, stochastic).clamp_(-q_max, q_max).add_(q_max + 1), scale, float(q_max + 1))


def asymmetric_grid(
    rows: torch.Tensor,
    bits: int,
    stochastic: bool,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> Grid:
    """Codes ``0 .. 2^b-1`` with an integer zero point over ``[min(x, 0), max(x, 0)]`` (so zero stays exact)."""
    q_max = 2**bits - 1
    if x_min is None or x_max is None:
        x_min, x_max = torch.aminmax(rows, dim=1, keepdim=True)
    x_min, x_max = torch.clamp(x_min, max=0.0), torch.clamp(x_max, min=0.0)
    scale = ((x_max - x_min) / q_max).clamp_min(_TINY)
    zero_point = torch.round(-x_min / scale)
    return Grid(_round(rows / scale, stochastic).add_(zero_point).clamp_(0, q_max), scale, zero_point)
