"""Pruning (``sparse_pruning``, ``row_pruning``, ``head_pruning``, ``channel_pruning``): which modules own a mask
(Linears; Conv2d for channels), which related modules shrink with them, and the removal of pruned units by
:func:`xtc_ds.redundancy_clean`.

``snip_momentum`` sparse pruning without ``different_groups`` prunes, as the legacy library did, every Linear not
named by ``excluded_modules`` at the shared ``dense_ratio`` (skipping, with a warning, those its block does not tile).

A group's ``modules[k]`` and ``related_modules[k]`` are paired as in the legacy library; each owner's related
modules are, per related pattern, the matches nearest to it in the module tree (the longest common dotted name
prefix: the same transformer layer). The legacy library paired them by match order and reused the first pattern's
masks for the later ones.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from xtc_ds._log import warn_once
from xtc_ds.architectures import resolve_patterns
from xtc_ds.config import SECTION, CompressionConfig, ConfigError, PruningMethod
from xtc_ds.errors import TrainingError
from xtc_ds.matching import ModulePlan, match_groups, weight_shape
from xtc_ds.nn.channel_mask import CHANNEL_MODULES, add_channel_mask, kept_channels, remove_channel_masks
from xtc_ds.nn.snip_mask import SnipMomentumMask, SnipSchedule, parse_block_pattern
from xtc_ds.nn.sparse_mask import SparseMask, masked_fake_quant
from xtc_ds.nn.structure_mask import COLUMNS, ROWS, AxisMask, StructureMask, kept_bias, kept_count, pruned_weight
from xtc_ds.zero3 import (
    PARTITION_NEW_MIN_DEEPSPEED,
    can_partition_new_parameters,
    full_parameters,
    partition_new_parameters,
)

__all__ = [
    "PrunePlan",
    "plan_pruning",
    "kept_count",
    "sparse_owners",
    "check_quantize_groups",
    "attach_masks",
    "pruning_masks",
    "score_unscored",
    "clean_pruned",
    "pruned_shapes",
    "file_shape",
    "shrink_to",
    "fit_attention_heads",
]

CHANNEL = "channel_pruning"
STRUCTURED = ("row_pruning", "head_pruning", CHANNEL)
TECHNIQUES = ("sparse_pruning", *STRUCTURED)
SPARSE_MASKS = (SparseMask, SnipMomentumMask)
MASKS = (StructureMask, *SPARSE_MASKS)
SHARED_GROUP = "shared_parameters"  # the group name of snip_momentum pruning configured without different_groups


@dataclass(frozen=True)
class PrunePlan:
    """One owner's mask: technique, group, method, kept fraction, heads, and the related modules shrinking with it."""

    technique: str
    group: str
    method: PruningMethod
    dense_ratio: float
    num_heads: Optional[int] = None
    related: tuple[str, ...] = field(default_factory=tuple)
    related_rows: tuple[str, ...] = field(default_factory=tuple)  # channel pruning: the related BatchNorm2d
    block: Optional[tuple[int, int]] = None  # snip_momentum
    schedule: Optional[SnipSchedule] = None  # snip_momentum


def _common_prefix(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        count += 1
    return count


def _nearest(owner: str, candidates: list[str]) -> list[str]:
    best = max((_common_prefix(owner, name) for name in candidates), default=0)
    return [name for name in candidates if _common_prefix(owner, name) == best]


def _related(
    model: nn.Module,
    owner: str,
    pattern_index: int,
    related: tuple[str, ...],
    eligible: dict[str, nn.Module],
    where: str,
) -> tuple[str, ...]:
    names: list[str] = []
    channels = any(isinstance(m, CHANNEL_MODULES) for m in eligible.values())
    kinds = "Linear, Conv2d or BatchNorm2d" if channels else "Linear"
    for j, pattern in enumerate(related):
        spot = f"{where}.related_modules[{pattern_index}][{j}]"
        regexes = [re.compile(p) for p in resolve_patterns(model, (pattern,), spot)]
        candidates = [n for n in eligible if n != owner and any(r.search(n) for r in regexes)]
        if not candidates:
            raise ConfigError(
                f"{spot}: {pattern!r} matches no {kinds} module (the module paired with it is '{owner}')"
            )
        names += [n for n in _nearest(owner, candidates) if n not in names]
    return tuple(names)


def _pattern_index(model: nn.Module, name: str, modules: tuple[str, ...], where: str) -> int:
    for k, pattern in enumerate(modules):
        if pattern == "*" or any(re.search(p, name) for p in resolve_patterns(model, (pattern,), f"{where}[{k}]")):
            return k
    raise AssertionError(name)


def _check_shapes(plan: PrunePlan, owner: str, linears: dict[str, nn.Module], where: str) -> None:
    out_features, in_features = weight_shape(linears[owner])
    if plan.technique == "head_pruning" and in_features % plan.num_heads:
        raise ConfigError(
            f"{SECTION}.head_pruning.shared_parameters.num_heads: {plan.num_heads} (does not divide the "
            f"{in_features} inputs of '{owner}')"
        )
    for name in plan.related:
        r_out, r_in = weight_shape(linears[name])
        ok = r_in == out_features if plan.technique == "row_pruning" else r_out == in_features
        if not ok:
            side = f"{r_in} inputs" if plan.technique == "row_pruning" else f"{r_out} outputs"
            need = f"{out_features} outputs" if plan.technique == "row_pruning" else f"{in_features} inputs"
            raise ConfigError(
                f"{where}.related_modules: '{name}' has {side}, but its module '{owner}' has {need}; a related module "
                "must consume the pruned rows (row pruning) or produce the pruned heads (head pruning)"
            )


def plan_pruning(model: nn.Module, config: CompressionConfig) -> dict[tuple[str, str], PrunePlan]:
    """``(technique, owner module name) -> PrunePlan`` for every enabled pruning group.

    Raises:
        ConfigError: a group or related pattern matching no eligible module, a related module of the wrong size, a
            module masked twice along one axis or both sparse and structured, ``related_modules`` on a sparse group,
            a grouped Conv2d.
    """
    linears = _linears(model)
    plans: dict[tuple[str, str], PrunePlan] = {}
    for technique in TECHNIQUES:
        section = getattr(config, technique)
        if not section.enabled:
            continue
        where = f"{SECTION}.{technique}"
        shared = section.shared_parameters
        if technique == "sparse_pruning":
            _refuse_related(section.different_groups, where)
        if shared.method is PruningMethod.SNIP_MOMENTUM:
            plans.update(_plan_snip(model, config, linears))
            continue
        eligible = linears
        if technique == CHANNEL:
            eligible = _conv2ds(model, config)
            if not eligible:
                continue
        owners = match_groups(model, section.different_groups, eligible, where)
        related_eligible = {**linears, **_channel_modules(model)} if technique == CHANNEL else linears
        modules = related_eligible | eligible
        for owner, group_name in owners.items():
            group = section.different_groups[group_name]
            group_where = f"{where}.different_groups.{group_name}"
            related: tuple[str, ...] = ()
            if group.related_modules:
                k = _pattern_index(model, owner, group.modules, f"{group_where}.modules")
                related = _related(model, owner, k, group.related_modules[k], related_eligible, group_where)
            plan = PrunePlan(
                technique,
                group_name,
                shared.method,
                group.params.dense_ratio,
                getattr(shared, "num_heads", None),
                related,
                tuple(n for n in related if isinstance(modules[n], nn.BatchNorm2d)),
            )
            if technique == CHANNEL:
                _check_channel_shapes(plan, owner, modules, group_where)
            else:
                _check_shapes(plan, owner, linears, group_where)
            plans[(technique, owner)] = plan
    _check_axes(plans)
    structured = _axes(plans)
    for technique, owner in plans:
        if technique == "sparse_pruning" and owner in structured:
            raise ConfigError(
                f"{SECTION}.sparse_pruning: '{owner}' is also pruned by rows or heads; a Linear takes one of the two"
            )
    return plans


def _refuse_related(groups: dict[str, Any], where: str) -> None:
    for name, group in groups.items():
        if group.related_modules:
            raise ConfigError(
                f"{where}.different_groups.{name}.related_modules: sparse pruning removes single weights, which "
                "shrinks no other module; remove related_modules"
            )


def _conv2ds(model: nn.Module, config: CompressionConfig) -> dict[str, nn.Module]:
    """The Conv2d modules ``channel_pruning`` may own; empty (after a warning saying so) when its groups match none,
    as on every BERT-family model, which then trains without it."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    where = f"{SECTION}.{CHANNEL}"
    for group_name, group in config.channel_pruning.different_groups.items():
        patterns = resolve_patterns(model, group.modules, f"{where}.different_groups.{group_name}.modules")
        if any(p == "*" or re.search(p, n) for p in patterns for n in convs):
            return convs
    warn_once(
        f"xtc_ds: {where} is enabled but {type(model).__name__} has no Conv2d module its groups match (channel "
        "pruning prunes Conv2d output channels only); it is skipped for this model"
    )
    return {}


def _channel_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and isinstance(m, CHANNEL_MODULES)}


def _check_channel_shapes(plan: PrunePlan, owner: str, modules: dict[str, nn.Module], where: str) -> None:
    """An owner Conv2d's output channels must be what each related module consumes: a Conv2d's input channels, a
    BatchNorm2d's channels, a Linear's inputs. Grouped convolutions tie channels together and are refused."""
    conv = modules[owner]
    for name in (owner, *plan.related):
        module = modules[name]
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ConfigError(
                f"{where}: '{name}' is a grouped Conv2d (groups={module.groups}); channel pruning removes channels of "
                "ungrouped Conv2d modules only"
            )
    for name in plan.related:
        module = modules[name]
        if isinstance(module, nn.BatchNorm2d):
            size, what = module.num_features, "channels"
        elif isinstance(module, nn.Conv2d):
            size, what = module.in_channels, "input channels"
        else:
            size, what = weight_shape(module)[1], "inputs"
        if size != conv.out_channels:
            raise ConfigError(
                f"{where}.related_modules: '{name}' has {size} {what}, but its module '{owner}' has "
                f"{conv.out_channels} output channels; a related module must consume the pruned channels"
            )


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if name and isinstance(module, nn.Linear)}


def _snip_owners(model: nn.Module, config: CompressionConfig, linears: dict[str, nn.Module]) -> dict[str, str]:
    """Owner -> group of ``snip_momentum`` pruning: the groups' matches, or every Linear its block tiles when the
    config has no groups; ``excluded_modules`` taken out of either."""
    section = config.sparse_pruning
    shared = section.shared_parameters
    where = f"{SECTION}.sparse_pruning"
    excluded = [re.compile(p) for p in shared.excluded_modules]
    eligible = {n: m for n, m in linears.items() if not any(p.search(n) for p in excluded)}
    height, width = parse_block_pattern(shared.block_pattern)
    if section.different_groups:
        owners = match_groups(model, section.different_groups, eligible, where)
        for owner, group_name in owners.items():
            rows, cols = weight_shape(linears[owner])
            if rows % height or cols % width:
                raise ConfigError(
                    f"{where}.shared_parameters.block_pattern: {shared.block_pattern!r} does not tile the "
                    f"{rows}x{cols} weight of '{owner}' (group '{group_name}'); pick a pattern that divides it or "
                    "add the module to excluded_modules"
                )
        return owners
    tiled = {n for n, m in eligible.items() if not (weight_shape(m)[0] % height or weight_shape(m)[1] % width)}
    skipped = sorted(set(eligible) - tiled)
    if skipped:
        warn_once(
            f"xtc_ds: {where}: snip_momentum leaves {skipped} unpruned (block_pattern {shared.block_pattern!r} "
            "does not tile their weights)"
        )
    if not tiled:
        raise ConfigError(
            f"{where}.shared_parameters.excluded_modules: {list(shared.excluded_modules)} (with block_pattern "
            f"{shared.block_pattern!r}, no Linear module is left to prune)"
        )
    return {name: SHARED_GROUP for name in eligible if name in tiled}


def _plan_snip(
    model: nn.Module, config: CompressionConfig, linears: dict[str, nn.Module]
) -> dict[tuple[str, str], PrunePlan]:
    section = config.sparse_pruning
    shared = section.shared_parameters
    schedule = SnipSchedule(shared.schedule_offset, shared.offset_end, shared.schedule_offset_stride)
    block = parse_block_pattern(shared.block_pattern)
    plans = {}
    for owner, group_name in _snip_owners(model, config, linears).items():
        group = section.different_groups.get(group_name)
        ratio = shared.dense_ratio if group is None else group.params.dense_ratio
        plans[("sparse_pruning", owner)] = PrunePlan(
            "sparse_pruning", group_name, shared.method, ratio, block=block, schedule=schedule
        )
    return plans


def _axes(plans: dict[tuple[str, str], PrunePlan]) -> dict[str, list[tuple[int, str]]]:
    """Module name -> ``(axis, owner)`` of every mask it applies."""
    axes: dict[str, list[tuple[int, str]]] = {}
    for (technique, owner), plan in plans.items():
        if technique == "sparse_pruning":
            continue
        own_axis = COLUMNS if technique == "head_pruning" else ROWS
        axes.setdefault(owner, []).append((own_axis, owner))
        for name in plan.related:
            axes.setdefault(name, []).append((own_axis if name in plan.related_rows else 1 - own_axis, owner))
    return axes


def _check_axes(plans: dict[tuple[str, str], PrunePlan]) -> None:
    for name, entries in _axes(plans).items():
        for axis in (ROWS, COLUMNS):
            owners = [owner for a, owner in entries if a == axis]
            if len(owners) > 1:
                what = "output rows" if axis == ROWS else "input columns"
                raise ConfigError(
                    f"{SECTION}: the {what} of '{name}' would be pruned by two masks (those of {owners}); a module "
                    "may lose rows (output channels) to one mask and columns (input channels) to one mask"
                )


def _kept_shape(name: str, plans: dict[tuple[str, str], PrunePlan], linears: dict[str, nn.Module]) -> list[int]:
    shape = list(weight_shape(linears[name]))
    for (technique, owner), plan in plans.items():
        if name != owner and name not in plan.related:
            continue
        owner_out, owner_in = weight_shape(linears[owner])
        if technique in ("row_pruning", CHANNEL):
            axis, kept = (ROWS if name == owner else COLUMNS), kept_count(plan.dense_ratio, owner_out)
        else:
            head_dim = owner_in // plan.num_heads
            axis, kept = (COLUMNS if name == owner else ROWS), kept_count(plan.dense_ratio, plan.num_heads) * head_dim
        shape[axis] = kept
    return shape


def sparse_owners(model: nn.Module, config: CompressionConfig) -> set[str]:
    """The Linears the config's ``sparse_pruning`` groups own (their 1-bit weights are stored as ternary codes)."""
    section = config.sparse_pruning
    if not section.enabled:
        return set()
    linears = _linears(model)
    if section.shared_parameters.method is PruningMethod.SNIP_MOMENTUM:
        return set(_snip_owners(model, config, linears))
    return set(match_groups(model, section.different_groups, linears, f"{SECTION}.sparse_pruning"))


def check_quantize_groups(
    model: nn.Module, plans: dict[tuple[str, str], PrunePlan], quant_plans: dict[str, ModulePlan]
) -> None:
    """A pruned weight is quantized as its kept sub-matrix (what the cleaned model holds): a fixed group count must
    divide that sub-matrix into equal groups of more than one weight."""
    linears = dict(model.named_modules())
    for name in _axes(plans):
        plan = quant_plans.get(name)
        if plan is None or plan.weight_group is None or plan.num_groups in (None, 1):
            continue
        rows, cols = _kept_shape(name, plans, linears)
        if (rows * cols) % plan.num_groups or rows * cols == plan.num_groups:
            raise ConfigError(
                f"{SECTION}.weight_quantization.shared_parameters.quantize_groups: {plan.num_groups} (does not divide "
                f"the {rows}x{cols} weights that pruning keeps of '{name}' into equal groups of more than one "
                'weight; pick a count that does, 1, or "per_row")'
            )


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


_SHRINKABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


def _kind(module: nn.Module) -> Optional[type]:
    return next((kind for kind in _SHRINKABLE if isinstance(module, kind)), None)


def _shape(module: nn.Module) -> Optional[list[int]]:
    """What :func:`shrink_to` rebuilds: ``[out, in]`` of a Linear or Conv2d, ``[channels]`` of a BatchNorm2d."""
    if isinstance(module, nn.Linear):
        return list(weight_shape(module))
    if isinstance(module, nn.Conv2d):
        return [module.out_channels, module.in_channels]
    if isinstance(module, nn.BatchNorm2d):
        return [module.num_features]
    return None


def file_shape(module: nn.Module, name: str, stored: Optional[dict[str, list[int]]]) -> Optional[list[int]]:
    """:func:`_shape` of ``module`` as the tensors ``stored`` (name -> shape, e.g. a safetensors header) give it, or
    as the module is when ``stored`` is None; None for other modules or when its weight is not stored."""
    kind = _kind(module)
    if kind is None:
        return None
    if stored is None:
        return _shape(module)
    shape = stored.get(f"{name}.running_mean" if kind is nn.BatchNorm2d else f"{name}.weight")
    shape = stored.get(f"{name}.weight") if shape is None else shape
    if shape is None:
        return None
    if kind is nn.Conv2d:
        return [shape[0], shape[1] * module.groups] if len(shape) == 4 else None
    return list(shape[:1]) if kind is nn.BatchNorm2d else list(shape)


def pruned_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``name -> shape`` (:func:`_shape`) of every Linear, Conv2d and BatchNorm2d smaller than the one
    ``model.config`` builds (those :func:`clean_pruned` shrank), which an export records so :func:`shrink_to` can
    rebuild them."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    with torch.device("meta"):
        reference = dict(type(model)(copy.deepcopy(config)).named_modules())
    shapes = {}
    for name, module in model.named_modules():
        built = reference.get(name)
        shape = _shape(module)
        if shape is not None and built is not None and _kind(built) is _kind(module) and shape != _shape(built):
            shapes[name] = shape
    return shapes


def _smaller(module: nn.Module, shape: list[int]) -> nn.Module:
    device = module.weight.device if getattr(module, "weight", None) is not None else None
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None, device=device)
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            shape[1],
            shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=device,
        )
    return nn.BatchNorm2d(
        shape[0], module.eps, module.momentum, module.affine, module.track_running_stats, device=device
    )


def shrink_to(model: nn.Module, shapes: dict[str, list[int]], where: str) -> None:
    """Replace each named Linear, Conv2d or BatchNorm2d of ``model`` by one of the recorded shape (same device and
    hyperparameters, no copy of weights: to be filled by ``load_state_dict``), and fit the attention modules' head
    counts.

    Raises:
        ConfigError: naming ``where`` when a name is not such a module of the model or a shape is not smaller.
    """
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        module = modules.get(name)
        current = None if module is None else _shape(module)
        if current is None or getattr(module, "groups", 1) != 1:
            raise ConfigError(
                f"{where}.{name}: not a Linear, ungrouped Conv2d or BatchNorm2d module of {type(model).__name__}"
            )
        fits = isinstance(shape, list) and len(shape) == len(current)
        if not (fits and all(type(d) is int and 1 <= d <= c for d, c in zip(shape, current))):
            raise ConfigError(f"{where}.{name}: {shape!r} (must be at most the model's {current})")
        model.set_submodule(name, _smaller(module, shape))
    fit_attention_heads(model)


_HEAD_COUNTS = ("num_attention_heads", "n_heads")  # BERT, RoBERTa, ELECTRA, DeBERTa; DistilBERT


def fit_attention_heads(model: nn.Module) -> None:
    """Tell every attention module whose query/key/value Linears lost whole heads how many it has left.

    transformers 5 reshapes by head size and needs nothing; transformers 4 reshapes by ``num_attention_heads``
    (DistilBERT: ``n_heads`` and ``dim``), which its own ``prune_heads`` updated the same way.
    """
    for module in model.modules():
        heads_attr = next((a for a in _HEAD_COUNTS if isinstance(getattr(module, a, None), int)), None)
        linears = [child for child in module.children() if isinstance(child, nn.Linear)]
        if heads_attr is None or not linears:
            continue
        heads = getattr(module, heads_attr)
        head_size = getattr(module, "attention_head_size", None) or getattr(module, "dim", 0) // heads
        width = min(linear.out_features for linear in linears)
        if not head_size or width % head_size or width // head_size == heads:
            continue
        setattr(module, heads_attr, width // head_size)
        if hasattr(module, "all_head_size"):
            module.all_head_size = width
        if heads_attr == "n_heads" and hasattr(module, "dim"):
            module.dim = width
