"""Structured pruning masks: which output rows (``row_pruning``) or attention heads (``head_pruning``) of a Linear,
or output channels of a Conv2d (``channel_pruning``, applied by :mod:`xtc_ds.nn.channel_mask`), stay, and the weight
a pruned (and possibly quantized) Linear computes with.

A mask belongs to the Linear it was configured on (its *owner*) and is also applied, along the matching axis, to
the owner's related modules: a pruned FFN row removes the next Linear's input column, a pruned head removes the
query/key/value rows of that head. Pruned weights are taken out *before* quantization, so every scale is computed
over the kept weights only, and a model cleaned by :func:`xtc_ds.redundancy_clean` (smaller Linears) computes
exactly what the masked model computed.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

__all__ = ["StructureMask", "AxisMask", "PrunedWeight", "kept_count", "unit_norms", "pruned_weight", "kept_bias"]

ROWS, COLUMNS = 0, 1


def kept_count(dense_ratio: float, units: int) -> int:
    """Units a mask keeps: ``ceil(dense_ratio * units)`` (at least one; a product like ``0.3 * 10`` that floating
    point puts a hair above 3 still keeps 3)."""
    return max(1, math.ceil(dense_ratio * units - 1e-9))


def unit_norms(weight: torch.Tensor, axis: int, unit_size: int) -> torch.Tensor:
    """L1 norm of each unit of ``weight`` (out_features, in_features; a Conv2d's (out, in, kh, kw) counts as
    (out, in * kh * kw)): rows (axis 0) or blocks of ``unit_size`` input columns (axis 1, one block per head)."""
    magnitude = weight.detach().float().abs().flatten(1)
    if axis == ROWS:
        return magnitude.reshape(-1, unit_size * magnitude.shape[1]).sum(dim=1)
    return magnitude.reshape(magnitude.shape[0], -1, unit_size).sum(dim=(0, 2))


class StructureMask(nn.Module):
    """Keeps the ``kept_units`` highest-scoring units of its owner's weight along one axis.

    ``l1`` (row pruning): the scores are the units' L1 norms, taken once when the schedule switches pruning on
    (a persistent buffer, so a resumed run keeps the same mask). ``topk``: the scores are a trainable Parameter,
    initialized to the units' L1 norms when the mask is created and learned through a straight-through mask,
    as in the legacy library (which started them at random).

    Args:
        technique: ``row_pruning``, ``head_pruning`` or ``channel_pruning``.
        group: the config group name.
        learned: ``topk`` scores (a Parameter) rather than fixed ``l1`` ones.
        kept_units: how many units stay.
        axis: 0 for output rows, 1 for input columns (head pruning acts on the output projection's inputs).
        units: number of rows, or of heads.
        unit_size: rows per unit (1) or input columns per head.
    """

    def __init__(
        self,
        technique: str,
        group: str,
        learned: bool,
        kept_units: int,
        axis: int,
        units: int,
        unit_size: int,
    ) -> None:
        super().__init__()
        self.technique, self.group, self.learned = technique, group, learned
        self.axis, self.units, self.unit_size = axis, units, unit_size
        self.kept_units = kept_units
        self.enabled = False
        self.shrinks = False  # set when related modules shrink with the owner, so cleaning removes the units
        self.saved_scores: Optional[torch.Tensor] = None  # a whole copy kept by the scheduler (ZeRO-3 partitions)
        if learned:
            self.scores = nn.Parameter(torch.zeros(units))
        else:
            self.register_buffer("scores", torch.zeros(units))
        self.register_buffer("scored", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def score(self, weight: torch.Tensor) -> None:
        """Set the scores to the units' L1 norms in the (whole, gathered) owner weight."""
        self.scores.copy_(unit_norms(weight, self.axis, self.unit_size).to(self.scores))
        self.scored.fill_(True)

    def kept(self) -> torch.Tensor:
        """Indices of the kept units, ascending (ties go to the lower index, so every rank picks the same)."""
        order = torch.argsort(self.scores.detach(), descending=True, stable=True)
        return order[: self.kept_units].sort().values

    def forward(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(kept unit indices, straight-through unit mask or None)``; called as a module so that ZeRO-3
        gathers learned scores. The mask's value is 0/1; its gradient goes to the scores unchanged."""
        kept = self.kept()
        if not self.learned:
            return kept, None
        mask = torch.zeros_like(self.scores).index_fill_(0, kept, 1.0)
        return kept, mask + self.scores - self.scores.detach()

    def element_indices(self, kept: torch.Tensor) -> torch.Tensor:
        """Kept rows or columns of the owner's weight for the kept units."""
        offsets = torch.arange(self.unit_size, device=kept.device)
        return (kept[:, None] * self.unit_size + offsets).reshape(-1)

    def _unit_name(self) -> str:
        if self.technique == "channel_pruning":
            return "channels"
        return "rows" if self.axis == ROWS and self.unit_size == 1 else "units"

    def extra_repr(self) -> str:
        method = "topk" if self.learned else "l1"
        return (
            f"{self.technique}, group={self.group}, method={method}, keep {self.kept_units} of {self.units} "
            f"{self._unit_name()}, enabled={self.enabled}"
        )


class AxisMask(NamedTuple):
    """A mask as one Linear applies it: ``mask`` along ``axis`` of this Linear's weight, the owner's own (whose
    straight-through gradient reaches the scores) or a related module's copy."""

    mask: StructureMask
    axis: int
    owned: bool


def _kept_elements(
    axis_mask: AxisMask, device: torch.device, gathered: bool
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    kept, ste = axis_mask.mask.forward() if gathered else axis_mask.mask()
    index = axis_mask.mask.element_indices(kept.to(device))
    if ste is not None and axis_mask.owned:
        return index, ste.repeat_interleave(axis_mask.mask.unit_size).to(device)
    return index, None


class PrunedWeight(NamedTuple):
    """What a pruned Linear computes with.

    Attributes:
        weight: kept weights (quantized over the kept sub-matrix), zeros where an owned mask prunes, and the
            full-precision weight where only a related mask does: those rows feed a pruned head or meet a
            zeroed input, so they change no output, and they carry the gradient that lets a pruned unit's
            ``topk`` score grow back.
        rows, cols: the kept output rows and input columns (None: all).
        zeroed_rows: the rows an owned mask keeps (its bias is zeroed elsewhere), or None.
        column_gradient: for an owned ``topk`` column mask, a zero-valued matrix applied to the *unmasked* input,
            through which the pruned columns' scores get a gradient (their masked inputs are zero).
    """

    weight: torch.Tensor
    rows: Optional[torch.Tensor]
    cols: Optional[torch.Tensor]
    zeroed_rows: Optional[torch.Tensor] = None
    column_gradient: Optional[torch.Tensor] = None


def _grid_mask(shape: torch.Size, rows: Optional[torch.Tensor], cols: Optional[torch.Tensor], device) -> torch.Tensor:
    """Boolean (out, in) mask of the kept rows x kept columns (None: all)."""
    row_mask = torch.ones(shape[0], dtype=torch.bool, device=device)
    col_mask = torch.ones(shape[1], dtype=torch.bool, device=device)
    if rows is not None:
        row_mask = torch.zeros_like(row_mask).index_fill_(0, rows, True)
    if cols is not None:
        col_mask = torch.zeros_like(col_mask).index_fill_(0, cols, True)
    return row_mask[:, None] & col_mask[None, :]


def pruned_weight(
    weight: torch.Tensor, quantize: Optional[nn.Module], masks: tuple[AxisMask, ...], gathered: bool = False
) -> PrunedWeight:
    """The kept sub-matrix is quantized on its own (so scales ignore pruned weights) and put back in place.

    ``gathered``: the caller holds the masks' scores whole (ZeRO-3), so the masks are evaluated without the
    module hooks through which ZeRO-3 would otherwise gather them (and prefetch other parameters).

    An owned ``topk`` mask adds a term whose value is zero and whose gradient reaches its scores as ``grad * w``
    (``w`` the quantized weight where kept, the full-precision one where pruned): the legacy straight-through mask.
    """
    index: list[Optional[torch.Tensor]] = [None, None]
    owned: list[Optional[torch.Tensor]] = [None, None]
    ste: list[Optional[torch.Tensor]] = [None, None]
    for axis_mask in masks:
        if axis_mask.mask.enabled:
            index[axis_mask.axis], ste[axis_mask.axis] = _kept_elements(axis_mask, weight.device, gathered)
            if axis_mask.owned:
                owned[axis_mask.axis] = index[axis_mask.axis]
    rows, cols = index
    sub = weight if rows is None else weight.index_select(0, rows)
    sub = sub if cols is None else sub.index_select(1, cols)
    if quantize is not None:
        sub = quantize(sub)
    all_rows = torch.arange(weight.shape[0], device=weight.device) if rows is None else rows
    all_cols = torch.arange(weight.shape[1], device=weight.device) if cols is None else cols
    kept_values = torch.zeros_like(weight).index_put((all_rows[:, None], all_cols[None, :]), sub)
    kept = _grid_mask(weight.shape, rows, cols, weight.device)
    loose = _grid_mask(weight.shape, owned[ROWS], owned[COLUMNS], weight.device) & ~kept
    full = torch.where(kept, kept_values, torch.where(loose, weight, torch.zeros_like(weight)))
    if ste[ROWS] is None and ste[COLUMNS] is None:
        return PrunedWeight(full, rows, cols, owned[ROWS])
    reference = torch.where(kept, kept_values, weight).detach()
    if ste[ROWS] is not None:
        full = full + (ste[ROWS] - ste[ROWS].detach())[:, None] * reference
    column_gradient = None
    if ste[COLUMNS] is not None:
        column_gradient = (ste[COLUMNS] - ste[COLUMNS].detach())[None, :] * reference
    return PrunedWeight(full, rows, cols, owned[ROWS], column_gradient)


def kept_bias(bias: Optional[torch.Tensor], rows: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``bias`` with the pruned rows' entries zeroed (None: all rows kept, or no bias)."""
    if rows is None or bias is None:
        return bias
    return torch.zeros_like(bias).index_copy(0, rows, bias.index_select(0, rows))
