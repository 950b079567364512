"""The legacy DeepSpeed entry points, ``init_compression`` and ``redundancy_clean``, with the same signatures.

Migrating from ``deepspeed.compression.compress`` is an import change.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import nn

from xtc_ds._log import announce, log_rank_zero, warn_once
from xtc_ds.config import SECTION, ConfigError, has_section, load_compression_config
from xtc_ds.inject import inject
from xtc_ds.layer_reduction import initialize_student, layer_list, reduction_modules
from xtc_ds.nn.qat_linear import is_conv1d
from xtc_ds.pruning import clean_pruned
from xtc_ds.state import compression_state, require_same_config, unwrap_model
from xtc_ds.zero3 import forget_parameter_trace, full_parameters

__all__ = ["init_compression", "redundancy_clean"]


def _warn_mpu(mpu: Any) -> None:
    if mpu is not None:
        warn_once(
            "xtc_ds: mpu is accepted for compatibility, but tensor-parallel (Row/ColumnParallelLinear) layers "
            "are not compressed; only nn.Linear, nn.Embedding and transformers Conv1D are"
        )


def init_compression(
    model: nn.Module, deepspeed_config: Any, teacher_model: Optional[nn.Module] = None, mpu: Any = None
) -> nn.Module:
    """Prepare ``model`` for compression training, as DeepSpeed's ``init_compression`` did.

    With ``layer_reduction`` enabled and a ``teacher_model``, the (shallower) ``model`` is first
    initialized from the teacher's ``teacher_layer`` layers and ``other_module_name`` modules. Then the
    Linear/Embedding/Conv1D modules selected by the quantization groups are replaced by QAT modules that
    share their Parameters. Quantization is live from each ``schedule_offset``: drive the schedule with
    :class:`xtc_ds.CompressionScheduler` (or use :func:`xtc_ds.initialize`, whose ``engine.step()`` does).

    Args:
        model: the model to compress (before ``deepspeed.initialize``).
        deepspeed_config: DeepSpeed JSON path or dict holding ``compression_training``.
        teacher_model: the teacher, needed to initialize a layer-reduced student.
        mpu: accepted for signature compatibility (model-parallel layers are not compressed).
    Returns:
        ``model``, modified in place.
    """
    config = load_compression_config(deepspeed_config)
    _warn_mpu(mpu)
    _refuse_shared_teacher(model, teacher_model)
    if not has_section(deepspeed_config):
        warn_once(f"xtc_ds: the DeepSpeed config has no {SECTION} section: nothing is compressed")
    reduction = config.layer_reduction
    if reduction.enabled:
        if teacher_model is not None:
            initialize_student(model, teacher_model, reduction)
        else:
            depth = len(layer_list(model, reduction_modules(model, reduction, "student")[0], "student"))
            if depth != len(reduction.teacher_layer):
                raise ConfigError(
                    f"{SECTION}.layer_reduction.teacher_layer: {list(reduction.teacher_layer)} (the student has "
                    f"{depth} layers; pass teacher_model, or build the student with xtc_ds.build_student)"
                )
            log_rank_zero(
                logging.INFO,
                "xtc_ds: layer_reduction enabled without teacher_model; the student is used "
                "as given (built by build_student or loaded from a checkpoint)",
            )
    report = inject(model, config)
    announce(_summary(model, config, report))
    return model


def _refuse_shared_teacher(model: nn.Module, teacher_model: Optional[nn.Module]) -> None:
    """A teacher that is the student, or shares a parameter with it, would freeze the student (the teacher is
    frozen) and fail only at the first backward, deep inside DeepSpeed."""
    if teacher_model is None:
        return
    student_params = {id(p) for p in model.parameters()}
    if teacher_model is model or any(id(p) in student_params for p in teacher_model.parameters()):
        raise ValueError(
            "teacher_model is the student model or shares its parameters; freezing the teacher would leave the "
            "student nothing to train. Pass a separate student: student = xtc_ds.build_student(teacher, config) "
            "(a copy of the teacher when layer reduction is off)"
        )


def _summary(model: nn.Module, config: Any, report: Any) -> str:
    """One line saying what is compressed, printed on rank 0 whatever the logging level."""
    wq, aq = config.weight_quantization, config.activation_quantization
    parts = []
    for kind, table, groups in (
        ("weights", report.weight_quantized, wq.different_groups),
        ("activations", report.activation_quantized, aq.different_groups),
    ):
        for group in sorted(set(table.values())):
            params = groups[group].params
            bits = getattr(params, "target_bits", None) or params.bits
            count = sum(1 for g in table.values() if g == group)
            parts.append(f"{kind} {bits}-bit in {count} modules ('{group}')")
    prunings = (
        ("sparse_pruning", report.sparse_pruned),
        ("row_pruning", report.row_pruned),
        ("head_pruning", report.head_pruned),
        ("channel_pruning", report.channel_pruned),
    )
    for technique, table in prunings:
        section = getattr(config, technique)
        for group in sorted(set(table.values())):
            count = sum(1 for g in table.values() if g == group)
            configured = section.different_groups.get(group)
            kept = section.shared_parameters.dense_ratio if configured is None else configured.params.dense_ratio
            parts.append(f"{technique.replace('_', ' ')} keeping {kept:.0%} in {count} modules ('{group}')")
    if config.layer_reduction.enabled:
        parts.append(f"{len(config.layer_reduction.teacher_layer)} layers kept")
    if config.knowledge_distillation.enabled:
        parts.append("knowledge distillation on")
    return f"xtc_ds: compressing {type(unwrap_model(model)).__name__}: " + ("; ".join(parts) or "nothing selected")


def redundancy_clean(model: nn.Module, deepspeed_config: Any = None, mpu: Any = None) -> nn.Module:
    """Bake the quantized weights into the model and remove pruned units, as DeepSpeed's ``redundancy_clean`` did.

    Every weight-quantized module's weight is replaced by its quantized value at ``target_bits`` (whatever
    step the schedule is at), and its weight quantizer is removed so it is not applied twice. Row and head
    pruning masks are applied at their ``dense_ratio`` (whatever the step): where the group names
    ``related_modules`` the pruned rows, heads and the related modules' matching columns or rows are removed
    (smaller Linears), else they are zeroed; quantized weights are baked over the kept weights only. Activation
    quantizers stay and are switched on: the result is the compressed model as it will be evaluated and
    exported. Works on the model or on a DeepSpeed engine (its ``module``).

    Args:
        model: a model prepared by ``init_compression``/``initialize``, or its engine (pass the engine under
            ZeRO-3; every rank must call this then).
        deepspeed_config: None to use the config the model was compressed with; one given must equal it (an
            error names every difference), as the legacy signature passed it again.
        mpu: accepted for signature compatibility.
    Returns:
        The cleaned model (``engine.module`` when given an engine), modified in place.
    """
    _warn_mpu(mpu)
    state = compression_state(model)
    root = unwrap_model(model)
    if state is None:
        raise ValueError("redundancy_clean: the model was not prepared by xtc_ds.init_compression / xtc_ds.initialize")
    if deepspeed_config is not None:
        require_same_config(state, load_compression_config(deepspeed_config), f"{SECTION}: redundancy_clean")
    if hasattr(model, "empty_partition_cache"):
        # A ZeRO-3 engine may still have parameters in flight from its last forward's prefetch; DeepSpeed 0.16 let
        # a gather of those read incomplete data (then baked into the weights). Release them all first.
        model.empty_partition_cache()
    clean_pruned(root)
    forget_parameter_trace(model)
    for module in root.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None:
            with full_parameters([module.weight], modify=True), torch.no_grad():
                weight = module.weight.t() if is_conv1d(module) else module.weight
                weight.copy_(quantizer.fake_quant(weight, quantizer.target_bits, stochastic=False))
            module.weight_quantizer = None
        act_quantizer = getattr(module, "act_quantizer", None)
        if act_quantizer is not None:
            act_quantizer.enabled = True
    state.cleaned = True
    return root
