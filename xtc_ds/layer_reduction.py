"""Layer reduction: a shallower student initialized from chosen teacher layers (no pre-training distillation).

The legacy library only copied parameters into a student the user had to build by hand, pairing them by
position (``zip(parameters(), parameters())``). Here the student is built from the teacher's own config,
and tensors are copied by name, parameters and buffers alike, after checking both sides have the same
names and shapes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from typing import Any

import torch
from torch import nn

from xtc_ds._log import log_rank_zero
from xtc_ds.architectures import layers_path, modules_outside
from xtc_ds.config import SECTION, ConfigError, LayerReductionConfig, load_compression_config

__all__ = ["build_student", "initialize_student", "layer_list", "reduction_modules"]

_PATH = f"{SECTION}.layer_reduction"


def layer_list(model: nn.Module, prefix: str, role: str) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer layers at ``prefix`` (e.g. ``bert.encoder.layer``)."""
    try:
        layers = model.get_submodule(prefix)
    except AttributeError:
        raise ConfigError(
            f"{_PATH}.module_name_prefix: {prefix!r} (the {role} {type(model).__name__} has no such submodule)"
        ) from None
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"{_PATH}.module_name_prefix: {prefix!r} (names a {type(layers).__name__} in the {role}, "
            "not the ModuleList of layers)"
        )
    return layers


def reduction_modules(
    model: nn.Module, reduction: LayerReductionConfig, role: str = "teacher"
) -> tuple[str, tuple[str, ...]]:
    """The layer list and the modules outside it that a student copies: ``module_name_prefix`` and
    ``other_module_name`` as configured, or derived from ``model`` where left out (:mod:`xtc_ds.architectures`)."""
    prefix = reduction.module_name_prefix or layers_path(model, f"{_PATH}.module_name_prefix")
    layer_list(model, prefix, role)
    return prefix, reduction.other_module_name or tuple(modules_outside(model, prefix))


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(itertools.chain(module.named_parameters(), module.named_buffers()))


def _copy_exact(dst: nn.Module, src: nn.Module, what: str) -> None:
    dst_tensors, src_tensors = _tensors(dst), _tensors(src)
    if dst_tensors.keys() != src_tensors.keys():
        missing = sorted(src_tensors.keys() ^ dst_tensors.keys())[:5]
        raise ConfigError(f"{_PATH}: cannot copy {what}: student and teacher tensors differ by name ({missing})")
    with torch.no_grad():
        for name, tensor in dst_tensors.items():
            if tensor.shape != src_tensors[name].shape:
                raise ConfigError(
                    f"{_PATH}: cannot copy {what}.{name}: student shape {tuple(tensor.shape)} != teacher shape "
                    f"{tuple(src_tensors[name].shape)}"
                )
            tensor.copy_(src_tensors[name])


def _gathered(model: nn.Module) -> contextlib.AbstractContextManager:
    """The model's full weights for reading: gathered when ZeRO-3 partitioned them (a model loaded under
    ``zero.Init``, as Trainer does with a ZeRO-3 config; every rank must enter), else as they are."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def initialize_student(student: nn.Module, teacher: nn.Module, reduction: LayerReductionConfig) -> None:
    """Copy teacher layer ``teacher_layer[i]`` into student layer ``i``, and every ``other_module_name`` module
    (both derived from the teacher where the config leaves them out: :func:`reduction_modules`). A teacher whose
    weights ZeRO-3 partitioned is gathered to read (every rank must call this then).

    Raises:
        ConfigError: depths or indices that do not fit the two models, or modules whose tensors differ.
    """
    with _gathered(teacher):
        _copy_layers(student, teacher, reduction)


def _copy_layers(student: nn.Module, teacher: nn.Module, reduction: LayerReductionConfig) -> None:
    prefix, others = reduction_modules(teacher, reduction)
    student_layers = layer_list(student, prefix, "student")
    teacher_layers = layer_list(teacher, prefix, "teacher")
    if len(student_layers) != len(reduction.teacher_layer):
        raise ConfigError(
            f"{_PATH}.teacher_layer: {list(reduction.teacher_layer)} (lists {len(reduction.teacher_layer)} layers "
            f"but the student has {len(student_layers)})"
        )
    for i, index in enumerate(reduction.teacher_layer):
        if index >= len(teacher_layers):
            raise ConfigError(
                f"{_PATH}.teacher_layer[{i}]: {index} (the teacher has {len(teacher_layers)} layers, "
                f"0..{len(teacher_layers) - 1})"
            )
        _copy_exact(student_layers[i], teacher_layers[index], f"{prefix}.{index}")
    for i, name in enumerate(others):
        try:
            dst, src = student.get_submodule(name), teacher.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"{_PATH}.other_module_name[{i}]: {name!r} (no such module in the student or teacher)"
            ) from None
        _copy_exact(dst, src, name)


def build_student(teacher_model: nn.Module, deepspeed_config: Any) -> nn.Module:
    """The student XTC trains: the shallower model ``layer_reduction`` describes, initialized from the teacher,
    or an exact copy of the teacher when layer reduction is off, so one code path serves every config.

    With layer reduction the student has the teacher's class and config with ``num_hidden_layers =
    len(teacher_layer)``; its layer ``i`` is an exact copy of teacher layer ``teacher_layer[i]``, and the
    ``other_module_name`` modules (embeddings, pooler, classifier) are copied too. Modules in neither list keep
    their fresh initialization, which is logged. A teacher whose weights ZeRO-3 partitioned is gathered to read.

    Args:
        teacher_model: a Hugging Face ``PreTrainedModel`` (BERT, RoBERTa, DistilBERT, DeBERTa, GPT-2, ...).
        deepspeed_config: path, dict or :class:`CompressionConfig`.
    Returns:
        The student, on the teacher's device and dtype, in the teacher's train/eval mode.

    Example:
        >>> student = xtc_ds.build_student(teacher, "ds_configs/ds_xtc.json")
    """
    reduction = load_compression_config(deepspeed_config).layer_reduction
    if not hasattr(teacher_model, "config"):
        raise TypeError(
            "build_student needs a Hugging Face model (with .config); build the student yourself and "
            "call init_compression(student, config, teacher_model=teacher) for other models"
        )
    student_config = copy.deepcopy(teacher_model.config)
    if reduction.enabled:
        student_config.num_hidden_layers = len(reduction.teacher_layer)
    reference = next(teacher_model.parameters())
    student = type(teacher_model)(student_config).to(device=reference.device, dtype=reference.dtype)
    if not reduction.enabled:
        with _gathered(teacher_model):
            _copy_exact(student, teacher_model, "the teacher")
        log_rank_zero(logging.INFO, "xtc_ds: layer_reduction is off; the student starts as a copy of the teacher")
        return student.train(teacher_model.training)
    initialize_student(student, teacher_model, reduction)
    prefix, others = reduction_modules(teacher_model, reduction)
    if not (reduction.module_name_prefix and reduction.other_module_name):
        log_rank_zero(logging.INFO, f"xtc_ds: layer reduction of {prefix}; copied besides the layers: {list(others)}")
    covered = (prefix, *others)
    fresh = [
        name
        for name, _ in student.named_parameters()
        if not any(name == c or name.startswith(c + ".") for c in covered)
    ]
    if fresh:
        log_rank_zero(
            logging.WARNING,
            f"xtc_ds: build_student left {len(fresh)} parameters at random initialization because "
            f"{_PATH}.other_module_name does not list them (e.g. {fresh[:3]})",
        )
    return student.train(teacher_model.training)
