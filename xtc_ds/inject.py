"""inject(), revert() and to_packed(): the only code that replaces submodules.

Validate everything first (``matching.plan_injection``), then swap. Replacements share the original
Parameters, so optimizer state, ``state_dict()`` keys and DeepSpeed checkpoints are unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from xtc_ds._log import log_rank_zero, warn_once
from xtc_ds.config import (
    SECTION,
    CompressionConfig,
    ConfigError,
    PruningMethod,
    QuantizationType,
    RangeCalibration,
    Rounding,
    load_compression_config,
)
from xtc_ds.matching import InjectionReport, ModulePlan, is_compressed, plan_injection
from xtc_ds.nn.channel_mask import CHANNEL_MODULES, remove_channel_masks
from xtc_ds.nn.fake_quant import ActFakeQuantizer, WeightFakeQuantizer
from xtc_ds.nn.packed_embedding import XtcPackedEmbedding
from xtc_ds.nn.packed_linear import XtcPackedLinear
from xtc_ds.nn.qat_embedding import XtcQATEmbedding
from xtc_ds.nn.qat_linear import XtcQATConv1D, XtcQATLinear, is_conv1d
from xtc_ds.pruning import attach_masks, check_quantize_groups, plan_pruning, pruning_masks
from xtc_ds.schedule import apply_schedule, quantizers
from xtc_ds.state import attach_state, compression_state, detach_state, require_same_config, unwrap_model

__all__ = ["inject", "revert", "to_packed", "set_submodule"]


def _announce(config: CompressionConfig) -> None:
    """Say how legacy settings that have no exact equivalent here are served: nothing is silently dropped."""
    _announce_sparse(config)
    wq = config.weight_quantization
    if not wq.enabled:
        return
    shared = wq.shared_parameters
    if not shared.quantize_weight_in_forward:
        log_rank_zero(
            logging.INFO,
            f"xtc_ds: {SECTION}.weight_quantization.shared_parameters.quantize_weight_in_forward is false (the legacy "
            "fp16 in-place MoQ path, removed from DeepSpeed); weights are fake-quantized in the forward pass with "
            "full-precision master weights instead, which gives the same forward numerics in fp32, bf16 and fp16",
        )
    if shared.quantizer_kernel:
        log_rank_zero(
            logging.INFO,
            f"xtc_ds: {SECTION}.weight_quantization.shared_parameters.quantizer_kernel is true; the fused "
            "quantization ops are used wherever they build for the device, whatever this flag says "
            "(python -m xtc_ds.report)",
        )
    for kind, section in (("weight_quantization", wq), ("activation_quantization", config.activation_quantization)):
        for name, group in section.different_groups.items():
            if group.related_modules:
                warn_once(
                    f"xtc_ds: {SECTION}.{kind}.different_groups.{name}.related_modules has no effect on quantization "
                    "(it names layers that pruning shrinks together); it is ignored for this group"
                )


_SNIP_ONLY = ("schedule_offset_end", "schedule_offset_stride", "block_pattern", "dense_ratio", "excluded_modules")


def _announce_sparse(config: CompressionConfig) -> None:
    sparse = config.sparse_pruning
    if not sparse.enabled:
        return
    default = type(sparse.shared_parameters)()
    if sparse.shared_parameters.method is PruningMethod.SNIP_MOMENTUM:
        if sparse.different_groups and sparse.shared_parameters.dense_ratio != default.dense_ratio:
            warn_once(
                f"xtc_ds: {SECTION}.sparse_pruning.shared_parameters.dense_ratio is used only without "
                "different_groups; here each group's params.dense_ratio sets what is kept"
            )
        return
    for key in _SNIP_ONLY:
        if getattr(sparse.shared_parameters, key) != getattr(default, key):
            warn_once(
                f"xtc_ds: {SECTION}.sparse_pruning.shared_parameters.{key} is used by method snip_momentum only; "
                f"with method {sparse.shared_parameters.method.value} it has no effect (each group's "
                "params.dense_ratio sets what is kept)"
            )


def _quantizers(config: CompressionConfig, plan: ModulePlan) -> tuple[Any, Any]:
    wq, aq = config.weight_quantization, config.activation_quantization
    weight_q = act_q = None
    if plan.weight_group is not None:
        shared = wq.shared_parameters
        weight_q = WeightFakeQuantizer(
            plan.weight_group,
            wq.different_groups[plan.weight_group].params.target_bits,
            plan.num_groups,
            symmetric=shared.quantization_type is QuantizationType.SYMMETRIC,
            stochastic=shared.rounding is Rounding.STOCHASTIC,
            format_name=wq.different_groups[plan.weight_group].params.format,
        )
    if plan.act_group is not None:
        shared = aq.shared_parameters
        act_q = ActFakeQuantizer(
            plan.act_group,
            aq.different_groups[plan.act_group].params.bits,
            symmetric=shared.quantization_type is QuantizationType.SYMMETRIC,
            static=shared.range_calibration is RangeCalibration.STATIC,
        )
    return weight_q, act_q


def _replacement(module: nn.Module, weight_q: Any, act_q: Any) -> nn.Module:
    if isinstance(module, nn.Embedding):
        return XtcQATEmbedding.from_embedding(module, weight_q)
    if isinstance(module, nn.Linear):
        return XtcQATLinear.from_linear(module, weight_q, act_q)
    if is_conv1d(module):
        return XtcQATConv1D.from_conv1d(module, weight_q, act_q)
    raise TypeError(f"xtc_ds cannot compress {type(module).__name__}")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject(model: nn.Module, deepspeed_config: Any) -> InjectionReport:
    """Replace the modules the config's quantization groups select by QAT modules, in place.

    Args:
        model: the model (``nn.Module``; not a DeepSpeed engine: inject before ``deepspeed.initialize``).
        deepspeed_config: path, DeepSpeed config dict, section dict or :class:`CompressionConfig`.
    Returns:
        :class:`InjectionReport` of module name -> group. Injecting the same config again is a no-op
        that returns the first report.
    Raises:
        ConfigError: invalid config, a group matching nothing, overlapping groups, indivisible groups,
            or a model already injected with a different config.
    """
    config = load_compression_config(deepspeed_config)
    state = compression_state(model)
    if state is not None:
        require_same_config(state, config, f"{SECTION}: inject (call revert() first to compress differently)")
        return state.report
    plans = plan_injection(model, config)
    prune_plans = plan_pruning(model, config)
    check_quantize_groups(model, prune_plans, plans)
    modules = dict(model.named_modules())
    for technique, owner in prune_plans:
        for name in (owner, *prune_plans[(technique, owner)].related):
            if not isinstance(modules[name], CHANNEL_MODULES):  # those take channel masks as they are
                plans.setdefault(name, ModulePlan())
    _announce(config)
    report = InjectionReport()
    for name, plan in plans.items():
        module = modules[name]
        if is_compressed(module):
            raise ConfigError(
                f"{SECTION}: module '{name}' is already an xtc_ds module but the model has no record of it"
            )
        weight_q, act_q = _quantizers(config, plan)
        set_submodule(model, name, _replacement(module, weight_q, act_q))
        if plan.weight_group is not None:
            report.weight_quantized[name] = plan.weight_group
        if plan.act_group is not None:
            report.activation_quantized[name] = plan.act_group
    attach_masks(model, prune_plans)
    for (technique, owner), prune_plan in prune_plans.items():
        getattr(report, technique.replace("_pruning", "_pruned"))[owner] = prune_plan.group
    attach_state(model, config, report)
    apply_schedule(config, *quantizers(model), step=0, masks=pruning_masks(model))
    log_rank_zero(logging.INFO, "xtc_ds: " + report.summary().replace("\n", "; "))
    return report


def revert(model: nn.Module) -> nn.Module:
    """Undo :func:`inject`: plain Linear/Conv1D/Embedding modules with the same Parameters."""
    if compression_state(model) is None:
        return model
    model = unwrap_model(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, XtcQATEmbedding):
            set_submodule(model, name, module.to_embedding())
        elif isinstance(module, XtcQATLinear):
            set_submodule(model, name, module.to_linear())
        elif XtcQATConv1D is not None and isinstance(module, XtcQATConv1D):
            set_submodule(model, name, module.to_conv1d())
        elif getattr(module, "channel_masks", ()):
            remove_channel_masks(module)
            module._modules.pop("channel_pruning", None)
    detach_state(model)
    return model


def to_packed(model: nn.Module, specs: dict[str, Any]) -> nn.Module:
    """Swap the modules named in ``specs`` (name -> :class:`xtc_ds.nn.PackedSpec`) for empty packed modules.

    Weight-quantized modules become :class:`XtcPackedLinear` / :class:`XtcPackedEmbedding` (fill them with
    ``load_state_dict``); a module that only quantizes its input becomes an :class:`XtcQATLinear` with that
    activation quantizer switched on. Used by :func:`xtc_ds.load_packed`.
    """
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if spec.bits is None:
            packed = _act_only(modules[name], spec)
        else:
            packed = (XtcPackedEmbedding if spec.kind == "embedding" else XtcPackedLinear)(spec)
        set_submodule(model, name, packed)
    return model


def _act_only(module: nn.Module, spec: Any) -> nn.Module:
    act_q = ActFakeQuantizer("export", spec.act_bits, symmetric=spec.act_symmetric, static=spec.act_static)
    act_q.enabled = True
    act_q.train(False)
    return _replacement(module, None, act_q)
