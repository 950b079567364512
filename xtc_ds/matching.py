"""Which module gets which quantizer: legacy ``re.search`` patterns (and ``"@role"`` names,
:mod:`xtc_ds.architectures`) resolved against ``named_modules()``.

All checks run here, before anything is replaced, so a bad config never leaves a half-injected model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from xtc_ds.architectures import resolve_patterns
from xtc_ds.config import PER_ROW, SECTION, CompressionConfig, ConfigError
from xtc_ds.nn.qat_linear import CONV1D, is_conv1d

__all__ = ["ModulePlan", "InjectionReport", "plan_injection", "match_groups", "weight_shape", "is_compressed"]

_CANDIDATES_SHOWN = 8


@dataclass(frozen=True)
class ModulePlan:
    """What one module receives: the weight group (and its group count) and the activation group."""

    weight_group: Optional[str] = None
    num_groups: Optional[int] = None  # None: one scale per row
    act_group: Optional[str] = None


@dataclass
class InjectionReport:
    """Record of an injection: module name -> group name, per technique."""

    weight_quantized: dict[str, str] = field(default_factory=dict)
    activation_quantized: dict[str, str] = field(default_factory=dict)
    sparse_pruned: dict[str, str] = field(default_factory=dict)
    row_pruned: dict[str, str] = field(default_factory=dict)
    head_pruned: dict[str, str] = field(default_factory=dict)
    channel_pruned: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per group: how many modules it covers."""
        lines = []
        for kind, table in (
            ("weight quantization", self.weight_quantized),
            ("activation quantization", self.activation_quantized),
            ("sparse pruning", self.sparse_pruned),
            ("row pruning", self.row_pruned),
            ("head pruning", self.head_pruned),
            ("channel pruning", self.channel_pruned),
        ):
            for group in sorted(set(table.values())):
                count = sum(1 for g in table.values() if g == group)
                lines.append(f"{kind} group '{group}': {count} modules")
        return "\n".join(lines) or "no module compressed"


def is_compressed(module: nn.Module) -> bool:
    """True for modules xtc_ds already replaced (they carry a ``weight_quantizer`` slot)."""
    return hasattr(module, "weight_quantizer") and hasattr(module, "act_quantizer")


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear/Conv1D, (num_embeddings, embedding_dim) of an Embedding.

    Reads ``ds_shape`` when the weight is a ZeRO-3 partition, so shapes are those of the whole tensor.
    """
    shape = tuple(getattr(module.weight, "ds_shape", module.weight.shape))
    if is_conv1d(module):
        return shape[1], shape[0]
    return shape[0], shape[1]


def _eligible(model: nn.Module, with_embeddings: bool) -> dict[str, nn.Module]:
    types: tuple[type, ...] = (nn.Linear,)
    if CONV1D is not None:
        types += (CONV1D,)
    if with_embeddings:
        types += (nn.Embedding,)
    return {name: module for name, module in model.named_modules() if name and isinstance(module, types)}


def match_groups(
    model: nn.Module, groups: Mapping[str, object], eligible: Mapping[str, nn.Module], path: str
) -> dict[str, str]:
    owner: dict[str, str] = {}
    for group_name, group in groups.items():
        where = f"{path}.different_groups.{group_name}.modules"
        patterns = [None if p == "*" else re.compile(p) for p in resolve_patterns(model, group.modules, where)]
        matched = [n for n in eligible if any(p is None or p.search(n) for p in patterns)]
        if not matched:
            shown = ", ".join(list(eligible)[:_CANDIDATES_SHOWN]) or "none"
            raise ConfigError(
                f"{path}.different_groups.{group_name}.modules: {list(group.modules)} matches no eligible module "
                f"(some eligible names: {shown})"
            )
        for name in matched:
            if name in owner:
                raise ConfigError(
                    f"{path}.different_groups: module '{name}' is matched by both group '{owner[name]}' and group "
                    f"'{group_name}'; a module may belong to one group per technique"
                )
            owner[name] = group_name
    return owner


def _num_groups(module: nn.Module, name: str, quantize_groups, path: str) -> Optional[int]:
    out_features, in_features = weight_shape(module)
    if isinstance(module, nn.Embedding):
        return None  # embeddings are always quantized per token, as in the legacy library
    groups = out_features if quantize_groups == PER_ROW else quantize_groups
    numel = out_features * in_features
    if numel % groups:
        raise ConfigError(
            f"{path}.shared_parameters.quantize_groups: {quantize_groups} (does not divide the "
            f"{out_features}x{in_features} weight of '{name}' into equal groups)"
        )
    if numel == groups:
        raise ConfigError(
            f"{path}.shared_parameters.quantize_groups: {quantize_groups} (one weight per group for the "
            f"{out_features}x{in_features} weight of '{name}': every weight would be its own scale and "
            "quantization would change nothing)"
        )
    return None if groups == out_features else groups


def plan_injection(model: nn.Module, config: CompressionConfig) -> dict[str, ModulePlan]:
    """Resolve every group of ``config`` against ``model`` and validate shapes, without changing the model.

    Args:
        model: the model to compress (not yet injected).
        config: parsed ``compression_training`` config.
    Returns:
        Module name -> :class:`ModulePlan`, for modules that get at least one quantizer.
    Raises:
        ConfigError: a group matches no eligible module, two groups of one technique match one module,
            or ``quantize_groups`` does not divide a weight.
    """
    weight_owner: dict[str, str] = {}
    act_owner: dict[str, str] = {}
    wq, aq = config.weight_quantization, config.activation_quantization
    if wq.enabled:
        weight_owner = match_groups(
            model, wq.different_groups, _eligible(model, True), f"{SECTION}.weight_quantization"
        )
    if aq.enabled:
        act_owner = match_groups(
            model, aq.different_groups, _eligible(model, False), f"{SECTION}.activation_quantization"
        )
    plans = {}
    for name, module in model.named_modules():
        if name not in weight_owner and name not in act_owner:
            continue
        num_groups = None
        if name in weight_owner:
            groups = wq.shared_parameters.quantize_groups
            num_groups = _num_groups(module, name, groups, f"{SECTION}.weight_quantization")
        plans[name] = ModulePlan(weight_owner.get(name), num_groups, act_owner.get(name))
    return plans
