"""Weight and activation fake-quantizers: the switchable state a QAT module carries.

They hold no persistent tensors, so an injected model's ``state_dict()`` keys are those of the original
model. Their switches (``enabled``, current ``bits``, fp16-mixing ``real_ratio``) are set by
:class:`xtc_ds.CompressionScheduler`; static activation ranges are saved through the scheduler's
``state_dict()`` for the same reason.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from xtc_ds._log import warn_once
from xtc_ds.ops import fake_quant_activation, fake_quant_weight
from xtc_ds.quant.formats import WeightFormat, weight_format

__all__ = ["WeightFakeQuantizer", "ActFakeQuantizer", "STATIC_RANGE_MOMENTUM"]

STATIC_RANGE_MOMENTUM = 0.95


class WeightFakeQuantizer(nn.Module):
    """Quantizes a weight in the forward pass; the master weight stays full precision.

    Args:
        group: name of the config group this module belongs to (for reports and export).
        target_bits: final precision (1 binary, 2 ternary, 3..8 uniform).
        num_groups: number of contiguous groups of the (out_features, in_features) weight, or ``None``
            for one scale per row (per output feature; per token for embeddings).
        symmetric: symmetric grid for 3..8 bits.
        stochastic: stochastic rounding for 3..8 bits.
        format_name: a registered weight format (:func:`xtc_ds.quant.formats.register_weight_format`) instead of
            the built-in format of the bits; it runs its pure-PyTorch reference.
    """

    def __init__(
        self,
        group: str,
        target_bits: int,
        num_groups: Optional[int],
        symmetric: bool = True,
        stochastic: bool = False,
        format_name: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.target_bits = target_bits
        self.num_groups = num_groups
        self.symmetric = symmetric
        self.stochastic = stochastic
        self.format_name = format_name
        self.enabled = False
        self.bits = target_bits
        self.real_ratio = 0.0

    def format(self, bits: Optional[int] = None) -> WeightFormat:
        """The weight format at ``bits`` (the current bits by default)."""
        return weight_format(self.bits if bits is None else bits, self.symmetric, self.format_name)

    def fake_quant(self, weight: torch.Tensor, bits: int, stochastic: bool) -> torch.Tensor:
        """``weight`` on the grid of ``bits`` with a straight-through gradient: the fused op for a built-in format,
        the format's reference for a registered one."""
        num_groups = weight.shape[0] if self.num_groups is None else self.num_groups
        if self.format_name is None:
            return fake_quant_weight(weight, bits, num_groups, self.symmetric, stochastic)
        form = self.format(bits)
        values = form.dequantize(form.quantize(weight.detach(), num_groups, stochastic)).to(weight.dtype)
        return values + (weight - weight.detach())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` (out_features, in_features) -> fake-quantized weight of the same shape and dtype."""
        if not self.enabled:
            return weight
        out = self.fake_quant(weight, self.bits, self.stochastic)
        if self.real_ratio > 0.0:
            out = self.real_ratio * weight + (1.0 - self.real_ratio) * out
        return out

    def extra_repr(self) -> str:
        groups = "per_row" if self.num_groups is None else self.num_groups
        return (
            f"group={self.group}, bits={self.bits}, target_bits={self.target_bits}, groups={groups}, "
            f"enabled={self.enabled}"
        )


class ActFakeQuantizer(nn.Module):
    """Quantizes a Linear layer's input to 8 or 4 bits, per token (dynamic) or with an EMA range (static).

    Args:
        group: config group name.
        bits: 4 or 8.
        symmetric: symmetric grid, else asymmetric with a zero point.
        static: keep one range, updated as an EMA (momentum 0.95) of batch min/max in training mode only
            (the batch extremes are all-reduced over data-parallel ranks, so every rank keeps the same range).
    """

    def __init__(self, group: str, bits: int, symmetric: bool = True, static: bool = False) -> None:
        super().__init__()
        self.group = group
        self.bits = bits
        self.symmetric = symmetric
        self.static = static
        self.enabled = False
        self.register_buffer("x_min", torch.zeros(()), persistent=False)
        self.register_buffer("x_max", torch.zeros(()), persistent=False)
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool), persistent=False)

    @torch.no_grad()
    def _update_range(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Data-parallel ranks see different batches; one range for all keeps their forwards (and the
            # range saved by rank 0 in checkpoints) identical.
            extremes = torch.stack([-lo, hi])
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
            lo, hi = -extremes[0], extremes[1]
        if bool(self.calibrated):
            lo = STATIC_RANGE_MOMENTUM * self.x_min + (1.0 - STATIC_RANGE_MOMENTUM) * lo
            hi = STATIC_RANGE_MOMENTUM * self.x_max + (1.0 - STATIC_RANGE_MOMENTUM) * hi
        self.x_min.copy_(lo)
        self.x_max.copy_(hi)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> fake-quantized ``x`` of the same shape and dtype."""
        if not self.enabled:
            return x
        if not self.static:
            return fake_quant_activation(x, self.bits, self.symmetric)
        if self.training:
            self._update_range(x.detach())
        if not bool(self.calibrated):
            warn_once(
                "static activation range used in eval mode before any training step calibrated it; "
                "quantizing with this batch's range instead"
            )
            return fake_quant_activation(x, self.bits, self.symmetric, x.min().detach(), x.max().detach())
        return fake_quant_activation(x, self.bits, self.symmetric, self.x_min, self.x_max)

    def extra_repr(self) -> str:
        mode = "static" if self.static else "dynamic"
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"group={self.group}, bits={self.bits}, {kind}, {mode}, enabled={self.enabled}"
