"""``redundancy_clean`` of pruned modules: bake kept weights in place, remove pruned units and masks."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from xtc_ds.errors import TrainingError
from xtc_ds.nn.channel_mask import kept_channels, remove_channel_masks
from xtc_ds.nn.snip_mask import SnipMomentumMask
from xtc_ds.nn.sparse_mask import SparseMask, masked_fake_quant
from xtc_ds.nn.structure_mask import COLUMNS, ROWS, kept_bias, pruned_weight
from xtc_ds.pruning.attach import pruning_masks, score_unscored
from xtc_ds.pruning.plan import MASKS, SPARSE_MASKS, TECHNIQUES
from xtc_ds.pruning.shapes import fit_attention_heads
from xtc_ds.zero3 import (
    PARTITION_NEW_MIN_DEEPSPEED,
    can_partition_new_parameters,
    full_parameters,
    partition_new_parameters,
)

__all__ = ["clean_pruned"]


def _clean_module(module: nn.Module) -> None:
    """Bake one pruned Linear: its kept weights quantized, and its pruned units removed or zeroed."""
    partitioned = hasattr(module.weight, "ds_id")
    with full_parameters([module.weight, module.bias] if module.bias is not None else [module.weight]):
        weight, rows, cols, zeroed_rows, _ = pruned_weight(
            module.weight, module.weight_quantizer, module.pruning, gathered=True
        )
        bias = kept_bias(module.bias, zeroed_rows)
        keep_rows = rows if any(m.mask.shrinks and m.axis == ROWS for m in module.pruning) else None
        keep_cols = cols if any(m.mask.shrinks and m.axis == COLUMNS for m in module.pruning) else None
        module.weight = nn.Parameter(_shrunk(weight.detach(), keep_rows, keep_cols).contiguous())
        if bias is not None:
            module.bias = nn.Parameter(_shrunk(bias.detach(), keep_rows, None).contiguous())
    module.out_features, module.in_features = module.weight.shape
    module.weight_quantizer = None
    if partitioned:
        partition_new_parameters(module)


def _clean_sparse(module: nn.Module, mask: Union[SparseMask, SnipMomentumMask]) -> None:
    """Bake a sparse-pruned Linear in place: kept weights (quantized at ``target_bits`` over the kept ones), zeros
    elsewhere. The caller holds learned scores whole, so the mask is evaluated without ZeRO-3's module hooks."""
    keep, _ = mask.forward()
    quantizer = module.weight_quantizer
    with full_parameters([module.weight], modify=True):
        if quantizer is None:
            baked = module.weight * keep
        else:
            groups = module.weight.shape[0] if quantizer.num_groups is None else quantizer.num_groups
            baked = masked_fake_quant(module.weight, keep, quantizer.format(quantizer.target_bits), groups)
        module.weight.copy_(baked)
    module.weight_quantizer = None


def _clean_channels(module: nn.Module) -> None:
    """Bake a channel-masked Conv2d or BatchNorm2d: the kept channels only where the mask's related modules shrink
    with it, the pruned ones zeroed otherwise (an owner Conv2d without related modules)."""
    rows, cols = kept_channels(module, ROWS), kept_channels(module, COLUMNS)
    if rows is not None and not any(m.mask.shrinks for m in module.channel_masks if m.axis == ROWS):
        zero_rows, rows = rows, None
    else:
        zero_rows = None
    names = [name for name in ("weight", "bias") if getattr(module, name, None) is not None]
    partitioned = any(hasattr(getattr(module, name), "ds_id") for name in names)
    with full_parameters([getattr(module, name) for name in names]):
        for name in names:
            tensor = getattr(module, name).detach()
            tensor = tensor if zero_rows is None else _zeroed(tensor, zero_rows)
            setattr(module, name, nn.Parameter(_shrunk(tensor, rows, None if name == "bias" else cols).contiguous()))
    if isinstance(module, nn.BatchNorm2d):
        for name in ("running_mean", "running_var"):
            stats = getattr(module, name, None)
            if stats is not None and rows is not None:
                setattr(module, name, stats.index_select(0, rows.to(stats.device)))
        module.num_features = module.num_features if rows is None else len(rows)
    else:
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
    if partitioned:
        partition_new_parameters(module)


def _zeroed(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(tensor).index_copy(0, rows, tensor.index_select(0, rows))


def _shrunk(tensor: torch.Tensor, rows: Optional[torch.Tensor], cols: Optional[torch.Tensor]) -> torch.Tensor:
    out = tensor if rows is None else tensor.index_select(0, rows)
    return out if cols is None or out.dim() == 1 else out.index_select(1, cols)


@torch.no_grad()
def clean_pruned(root: nn.Module) -> None:
    """Remove pruned units for good: masks whose related modules shrink with them take the units out of the
    weights (smaller Linears); the others, and sparse masks, zero them. Quantized weights are baked over the kept
    weights, as in training. Masks apply whatever step the schedule is at, as quantization does at ``target_bits``."""
    masks = pruning_masks(root)
    pruned = [m for m in root.modules() if getattr(m, "pruning", ())]
    channels = [m for m in root.modules() if getattr(m, "channel_masks", ())]
    if any(hasattr(m.weight, "ds_id") for m in (*pruned, *channels)) and not can_partition_new_parameters():
        import deepspeed

        raise TrainingError(
            f"redundancy_clean: removing pruned units from a ZeRO-3 partitioned model needs DeepSpeed >= "
            f"{'.'.join(map(str, PARTITION_NEW_MIN_DEEPSPEED))} (this is {deepspeed.__version__}, whose gathers of "
            "the re-partitioned weights can return corrupt data); upgrade DeepSpeed, or save a checkpoint and clean "
            "the model loaded from it outside ZeRO-3 (as launch/train.py does)"
        )
    score_unscored(masks, only_enabled=False)
    for _, _, mask in masks:
        mask.enabled = True
    learned = [mask.scores for _, _, mask in masks if mask.learned]
    with full_parameters(learned):
        for module in pruned:
            _clean_module(module)
        for module in channels:
            _clean_channels(module)
        for _, owner, mask in masks:
            if isinstance(mask, SPARSE_MASKS):
                _clean_sparse(owner, mask)
    for module in pruned:
        module.pruning = ()
    for module in channels:
        remove_channel_masks(module)
    for module in {id(m): m for m in (*pruned, *channels, *(owner for _, owner, _ in masks))}.values():
        for technique in TECHNIQUES:
            if isinstance(getattr(module, technique, None), MASKS):
                delattr(module, technique)
    fit_attention_heads(root)
