"""``sparse_pruning`` with ``method: snip_momentum``: block-sparse masks grown gradually from gradient saliency.

Each owner's weight is cut into ``block_pattern`` blocks (``"4x1"``: 4 output rows by 1 input column, as Intel
Neural Compressor reads the pattern). A block's score is a momentum sum of its SNIP saliency ``|W * dL/dW|``:
every micro-batch's backward adds the block sums of ``|W * grad|`` (the gradient of the weight the layer computes
with), and each optimizer step ends by multiplying the scores by ``MOMENTUM``. At the pruning steps ``offset,
offset + stride, ... <= end`` (after the step's update) the lowest-scoring kept blocks go, the sparsity following
the cubic schedule ``(1 - dense_ratio) * (1 - (1 - i / n)**3)`` of the ``i``-th of ``n`` steps, so the last one
keeps exactly the configured ``dense_ratio`` of the blocks. A pruned block never comes back. Each step's
contributions are summed over the data-parallel ranks (one all-reduce per step while scores are recorded), so
every rank holds the same scores and keeps the same blocks, and pruning itself needs no collective
(``redundancy_clean`` may run on one rank).

The legacy library delegated this method to Intel Neural Compressor (through imports that could not work); INC
ranks blocks globally across layers by default, xtc_ds ranks them per layer, so every layer keeps its group's ratio.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from xtc_ds._log import warn_once
from xtc_ds.nn.structure_mask import kept_count

__all__ = ["MOMENTUM", "SnipSchedule", "SnipMomentumMask", "parse_block_pattern", "sum_over_ranks"]

MOMENTUM = 0.9


def parse_block_pattern(pattern: str) -> tuple[int, int]:
    """``"4x1"`` -> ``(4, 1)``: rows by columns of one block."""
    rows, cols = pattern.split("x")
    return int(rows), int(cols)


@dataclass(frozen=True)
class SnipSchedule:
    """When blocks are pruned: at ``offset``, then every ``stride`` steps up to ``end`` (one shot if equal)."""

    offset: int
    end: int
    stride: int

    @property
    def events(self) -> int:
        return (self.end - self.offset) // self.stride + 1

    @property
    def last_step(self) -> int:
        """The last pruning step (``end`` itself when the stride reaches it)."""
        return self.offset + (self.events - 1) * self.stride

    def dense_ratio_at(self, step: int, dense_ratio: float) -> Optional[float]:
        """The fraction of blocks kept after pruning at ``step``, or None when ``step`` is not a pruning step."""
        since = step - self.offset
        if since < 0 or step > self.last_step or since % self.stride:
            return None
        progress = (since // self.stride + 1) / self.events
        return 1.0 - (1.0 - dense_ratio) * (1.0 - (1.0 - progress) ** 3)


class SnipMomentumMask(nn.Module):
    """The kept blocks of one Linear and their momentum scores.

    ``scores`` is the kept-weight mask (a persistent boolean buffer of the weight's shape, as for ``l1``), ``momentum``
    the block scores (persistent, so a resumed run goes on with them). ``scored`` turns True when the last pruning
    step has run (or :func:`xtc_ds.redundancy_clean` pruned to the final ratio early).
    """

    technique = "sparse_pruning"
    learned = False
    saved_scores = None

    def __init__(
        self, group: str, dense_ratio: float, block: tuple[int, int], shape: tuple[int, int], schedule: SnipSchedule
    ) -> None:
        super().__init__()
        self.group, self.dense_ratio, self.block, self.schedule = group, dense_ratio, block, schedule
        self.units = shape[0] * shape[1]
        self.blocks = (shape[0] // block[0], shape[1] // block[1])
        self.enabled = False
        self.recording = False
        self.register_buffer("scores", torch.ones(shape, dtype=torch.bool))
        self.register_buffer("momentum", torch.zeros(self.blocks))
        self.register_buffer("pending", torch.zeros(self.blocks), persistent=False)  # this step's contributions
        self.register_buffer("scored", torch.zeros((), dtype=torch.bool))

    @property
    def kept_units(self) -> int:
        return int(self.scores.sum())

    def _block_sums(self, values: torch.Tensor) -> torch.Tensor:
        (rows, cols), (height, width) = self.blocks, self.block
        return values.float().reshape(rows, height, cols, width).sum(dim=(1, 3))

    def watch(self, effective: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``effective`` (the weight the layer computes with) as a view whose gradient, when the backward pass
        reaches it, adds the block sums of ``|weight * grad|`` to the scores (a view, so that the hook lives as long
        as this step's graph, never on the Parameter itself)."""
        if not effective.requires_grad:
            return effective
        watched = effective.view_as(effective)
        watched.register_hook(functools.partial(self._record, weight.detach()))
        return watched

    @torch.no_grad()
    def _record(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self.pending += self._block_sums((weight * grad).abs())

    @torch.no_grad()
    def advance(self, step: int) -> None:
        """After optimizer step ``step`` (its contributions already summed over the ranks by
        :func:`sum_over_ranks`): add them to the scores, prune if it is a pruning step, then decay the scores."""
        self.momentum += self.pending
        self.pending.zero_()
        ratio = self.schedule.dense_ratio_at(step, self.dense_ratio)
        if ratio is not None:
            self._prune(self.momentum, ratio)
            self.scored.fill_(step == self.schedule.last_step)
        self.momentum *= MOMENTUM
        self.recording = step < self.schedule.last_step

    def _prune(self, scores: torch.Tensor, ratio: float) -> None:
        height, width = self.block
        kept_blocks = self.scores[::height, ::width]
        count = min(int(kept_blocks.sum()), kept_count(ratio, kept_blocks.numel()))
        ranked = torch.where(kept_blocks, scores.to(self.momentum.device), float("-inf")).reshape(-1)
        keep = torch.zeros(ranked.numel(), dtype=torch.bool, device=ranked.device)
        keep[torch.topk(ranked, count, sorted=False).indices] = True
        keep = keep.reshape(self.blocks)
        self.scores.copy_(keep.repeat_interleave(height, 0).repeat_interleave(width, 1))

    @torch.no_grad()
    def score(self, weight: torch.Tensor) -> None:
        """Prune to the final ``dense_ratio`` now (``redundancy_clean`` before the schedule's last pruning step):
        by the momentum scores, or by the blocks' ``|W|`` when no gradient was ever recorded."""
        scores = self.momentum + self.pending
        if not bool(scores.any()):
            warn_once(
                f"xtc_ds: sparse_pruning group '{self.group}' (snip_momentum) is pruned before any gradient was "
                "recorded; its blocks are ranked by weight magnitude"
            )
            scores = self._block_sums(weight.detach().abs())
        self._prune(scores, self.dense_ratio)
        self.scored.fill_(True)

    def forward(self) -> tuple[torch.Tensor, None]:
        """``(kept weights as a bool matrix, None)``: the same interface as :class:`SparseMask`."""
        return self.scores, None

    def extra_repr(self) -> str:
        height, width = self.block
        return (
            f"sparse_pruning, group={self.group}, method=snip_momentum, block={height}x{width}, keep "
            f"{self.kept_units} of {self.units} weights (target {self.dense_ratio})"
        )


@torch.no_grad()
def sum_over_ranks(masks: list[SnipMomentumMask]) -> None:
    """Sum the step's score contributions of every recording mask over the data-parallel ranks, in one all-reduce
    (every rank steps the schedule, and the masks record on the same steps everywhere)."""
    pending = [mask.pending for mask in masks if mask.recording]
    if not pending or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    flat = torch.cat([p.reshape(-1) for p in pending])
    dist.all_reduce(flat)
    for tensor, chunk in zip(pending, flat.split([p.numel() for p in pending])):
        tensor.copy_(chunk.view_as(tensor))
