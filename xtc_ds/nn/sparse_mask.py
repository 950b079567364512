"""Unstructured (``sparse_pruning``) masks: which single weights of a Linear stay, and the weight it computes with.

Pruned weights are taken out before quantization: every group's scale is computed over its kept weights only
(the legacy library quantized first and masked after, so pruned weights still set the scales), and a binary
weight becomes three-valued (``-alpha``, 0, ``+alpha``), which the packed export stores as ternary codes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from xtc_ds.quant.formats import WeightFormat

__all__ = ["SparseMask", "sparse_quantized", "masked_fake_quant"]


class SparseMask(nn.Module):
    """Keeps the ``kept_units`` weights of its owner with the highest scores (over the whole matrix, as legacy).

    ``l1``: ``scores`` is a persistent boolean buffer, the mask itself, taken from ``|W|`` when the schedule
    switches pruning on. ``topk``: ``scores`` is a trainable Parameter of the weight's shape, started at ``|W|``
    when the mask is created (legacy: at random) and learned through a straight-through mask.
    """

    technique = "sparse_pruning"

    def __init__(self, group: str, learned: bool, kept_units: int, shape: tuple[int, int]) -> None:
        super().__init__()
        self.group, self.learned, self.kept_units = group, learned, kept_units
        self.units = shape[0] * shape[1]
        self.enabled = False
        self.saved_scores: Optional[torch.Tensor] = None  # a whole copy kept by the scheduler (ZeRO-3 partitions)
        if learned:
            self.scores = nn.Parameter(torch.zeros(shape))
        else:
            self.register_buffer("scores", torch.ones(shape, dtype=torch.bool))
        self.register_buffer("scored", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _top(values: torch.Tensor, count: int) -> torch.Tensor:
        flat = values.detach().reshape(-1).float()
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[torch.topk(flat, count, sorted=False).indices] = True
        return keep.reshape(values.shape)

    @torch.no_grad()
    def score(self, weight: torch.Tensor) -> None:
        """``l1``: keep the largest ``|W|``; ``topk``: scores := ``|W|`` (the whole, gathered weight)."""
        if self.learned:
            self.scores.copy_(weight.detach().abs().to(self.scores))
        else:
            self.scores.copy_(self._top(weight.abs(), self.kept_units))
        self.scored.fill_(True)

    def forward(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(kept weights as a bool matrix, straight-through float mask or None)``; called as a module so that
        ZeRO-3 gathers learned scores."""
        if not self.learned:
            return self.scores, None
        keep = self._top(self.scores, self.kept_units)
        return keep, keep.to(self.scores.dtype) + self.scores - self.scores.detach()

    def extra_repr(self) -> str:
        method = "topk" if self.learned else "l1"
        return f"sparse_pruning, group={self.group}, method={method}, keep {self.kept_units} of {self.units} weights"


def masked_fake_quant(
    weight: torch.Tensor, keep: torch.Tensor, form: WeightFormat, num_groups: int, stochastic: bool = False
) -> torch.Tensor:
    """The kept weights quantized with scales over the kept weights only, zeros elsewhere (no gradient).

    Binary: ``sign(w) * mean_kept|w|`` per group. Ternary: threshold ``0.7 * mean_kept|w|``, scale the mean kept
    ``|w|`` above it. 3..8 bits: the grid of ``w * keep`` (:meth:`WeightFormat.masked_values`).
    """
    rows = weight.detach().reshape(num_groups, -1).float()
    values = form.masked_values(rows, keep.reshape(num_groups, -1), stochastic)
    return values.reshape(weight.shape).to(weight.dtype)


def sparse_quantized(weight: torch.Tensor, quantizer: Optional[nn.Module], mask: SparseMask) -> torch.Tensor:
    """The weight a sparse-pruned Linear computes with: kept weights (quantized when ``quantizer`` is on), zeros
    elsewhere; the gradient reaches the kept weights unchanged and, for ``topk``, the scores as ``grad * w``."""
    keep, ste = mask()
    if quantizer is not None and quantizer.enabled:
        groups = weight.shape[0] if quantizer.num_groups is None else quantizer.num_groups
        values = masked_fake_quant(weight, keep, quantizer.format(), groups, quantizer.stochastic)
        if quantizer.real_ratio > 0.0:  # fp16_mixed_quantize, as WeightFakeQuantizer does
            values = quantizer.real_ratio * weight.detach() * keep + (1.0 - quantizer.real_ratio) * values
        kept = weight * keep
        out = values.detach() + (kept - kept.detach())  # exactly the values; straight-through gradient
    else:
        out = weight * keep
    if ste is not None:
        reference = torch.where(keep, out, weight).detach()
        out = out + (ste - ste.detach()) * reference
    return out
