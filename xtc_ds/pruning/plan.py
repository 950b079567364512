"""Which modules own a pruning mask, which related modules shrink with each, and the checks on them: the plan
that :mod:`~xtc_ds.pruning.attach` builds masks from and the export reads (``sparse_owners``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from xtc_ds._log import warn_once
from xtc_ds.architectures import resolve_patterns
from xtc_ds.config import SECTION, CompressionConfig, ConfigError, PruningMethod
from xtc_ds.matching import ModulePlan, match_groups, weight_shape
from xtc_ds.nn.channel_mask import CHANNEL_MODULES
from xtc_ds.nn.snip_mask import SnipMomentumMask, SnipSchedule, parse_block_pattern
from xtc_ds.nn.sparse_mask import SparseMask
from xtc_ds.nn.structure_mask import COLUMNS, ROWS, StructureMask, kept_count

__all__ = [
    "CHANNEL",
    "STRUCTURED",
    "TECHNIQUES",
    "SPARSE_MASKS",
    "MASKS",
    "SHARED_GROUP",
    "PrunePlan",
    "plan_pruning",
    "sparse_owners",
    "check_quantize_groups",
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
