"""The masks of a pruning plan on the model, and the list the schedule switches."""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from xtc_ds.config import PruningMethod
from xtc_ds.matching import weight_shape
from xtc_ds.nn.channel_mask import CHANNEL_MODULES, add_channel_mask
from xtc_ds.nn.snip_mask import SnipMomentumMask
from xtc_ds.nn.sparse_mask import SparseMask
from xtc_ds.nn.structure_mask import COLUMNS, ROWS, AxisMask, StructureMask, kept_count
from xtc_ds.pruning.plan import CHANNEL, MASKS, TECHNIQUES, PrunePlan
from xtc_ds.zero3 import (
    full_parameters,
)

__all__ = ["attach_masks", "pruning_masks", "score_unscored"]


def attach_masks(model: nn.Module, plans: dict[tuple[str, str], PrunePlan]) -> None:
    """Give every owner (an ``XtcQATLinear``, or for ``channel_pruning`` the user's Conv2d) its mask submodule
    (``sparse_pruning``: a :class:`SparseMask`; ``row_pruning``/``head_pruning``/``channel_pruning``: a
    :class:`StructureMask`), and every module a structured mask acts on its :class:`AxisMask` (Linears: in
    ``pruning``; Conv2d/BatchNorm2d: in ``channel_masks``, applied by hooks). ``topk`` scores start from the
    magnitudes of the weight as it is now."""
    modules = dict(model.named_modules())
    for (technique, owner), plan in plans.items():
        module = modules[owner]
        out_features, in_features = weight_shape(module)
        learned = plan.method is PruningMethod.TOPK
        if technique == CHANNEL:
            mask = StructureMask(
                technique, plan.group, learned, kept_count(plan.dense_ratio, out_features), ROWS, out_features, 1
            )
            mask.shrinks = bool(plan.related)
            # topk's straight-through gradient is taken after a related BatchNorm2d, which cancels any scale
            # given to a channel before it (the legacy mask sat before it and its scores learned nothing)
            add_channel_mask(module, AxisMask(mask, ROWS, not plan.related_rows))
            for name in plan.related:
                related = modules[name]
                if name in plan.related_rows:
                    add_channel_mask(related, AxisMask(mask, ROWS, True))
                elif isinstance(related, CHANNEL_MODULES):
                    add_channel_mask(related, AxisMask(mask, COLUMNS, False))
                else:
                    related.pruning = (*related.pruning, AxisMask(mask, COLUMNS, False))
        elif plan.schedule is not None:
            mask = SnipMomentumMask(
                plan.group, plan.dense_ratio, plan.block, (out_features, in_features), plan.schedule
            )
        elif technique == "sparse_pruning":
            numel = out_features * in_features
            mask = SparseMask(plan.group, learned, kept_count(plan.dense_ratio, numel), (out_features, in_features))
        else:
            if technique == "row_pruning":
                axis, units, unit_size = ROWS, out_features, 1
            else:
                axis, units, unit_size = COLUMNS, plan.num_heads, in_features // plan.num_heads
            kept = kept_count(plan.dense_ratio, units)
            mask = StructureMask(technique, plan.group, learned, kept, axis, units, unit_size)
            mask.shrinks = bool(plan.related)
            module.pruning = (*module.pruning, AxisMask(mask, axis, True))
            for name in plan.related:
                modules[name].pruning = (*modules[name].pruning, AxisMask(mask, 1 - axis, False))
        mask.to(module.weight.device)
        if learned:
            with full_parameters([module.weight]):
                mask.score(module.weight)
        setattr(module, technique, mask)


def pruning_masks(
    root: nn.Module,
) -> list[tuple[str, nn.Module, Union[StructureMask, SparseMask, SnipMomentumMask]]]:
    """``(mask name, owner module, mask)`` of every pruning mask (sparse or structured) under ``root``."""
    found = []
    for name, module in root.named_modules():
        for technique in TECHNIQUES:
            mask = getattr(module, technique, None)
            if isinstance(mask, MASKS):
                found.append((f"{name}.{technique}", module, mask))
    return found


def score_unscored(masks: list[tuple[str, nn.Module, Any]], only_enabled: bool = True) -> None:
    """Take the L1 scores of every (enabled) mask not scored yet, from its owner's whole weight. With
    ``only_enabled`` (the schedule's call), ``snip_momentum`` masks are left to their own pruning steps; without
    (``redundancy_clean``), they are pruned to their final ratio."""
    for _, owner, mask in masks:
        on_schedule = mask.enabled and not isinstance(mask, SnipMomentumMask)
        if (on_schedule or not only_enabled) and not bool(mask.scored):
            with full_parameters([owner.weight]):
                mask.score(owner.weight)
