"""``xtc_ds.initialize``: ``deepspeed.initialize`` with the ``compression_training`` section handled by xtc_ds.

It splits the section off (DeepSpeed >= 0.19 rejects it, older DeepSpeed would run its removed library
on it), injects compression *before* DeepSpeed builds its optimizer and ZeRO partitions, and ties the
compression schedule to the engine: every applied ``engine.step()`` advances it, and
``engine.save_checkpoint`` / ``engine.load_checkpoint`` carry its state.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from xtc_ds._log import log_rank_zero
from xtc_ds.compress import init_compression
from xtc_ds.config import CompressionConfig, split_deepspeed_config
from xtc_ds.distill import DistillationLoss, require_eager_attention
from xtc_ds.distributed import (
    map_mpi_environment,
    prepare_deepspeed_ops,
    release_shm_workspace,
    single_process_defaults,
)
from xtc_ds.schedule import CompressionScheduler

__all__ = ["initialize", "prepare_models", "partitioned_teacher", "XtcRuntime", "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "xtc_compression"


@dataclass
class XtcRuntime:
    """What ``xtc_ds.initialize`` hangs on the engine as ``engine.xtc``."""

    config: CompressionConfig
    scheduler: CompressionScheduler
    teacher: Optional[nn.Module] = None
    distillation: Optional[DistillationLoss] = None

    def report(self) -> dict[str, Any]:
        """What is compressed and where the schedule stands (:meth:`CompressionScheduler.report`), plus whether
        knowledge distillation runs."""
        return {**self.scheduler.report(), "distillation": self.distillation is not None}

    def teacher_outputs(self, *args: Any, **kwargs: Any) -> Any:
        """Run the frozen teacher without gradients, asking for what the KD loss reads."""
        if self.teacher is None:
            raise ValueError("xtc_ds.initialize was called without teacher_model")
        extra = self.distillation.model_kwargs if self.distillation is not None else {}
        with torch.no_grad():
            return self.teacher(*args, **kwargs, **extra)

    def distillation_loss(self, student_outputs: Any, teacher_outputs: Any) -> torch.Tensor:
        """The configured one-stage KD loss."""
        if self.distillation is None:
            raise ValueError("compression_training.knowledge_distillation is not enabled")
        return self.distillation(student_outputs, teacher_outputs)

    def distilled(self, model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """XTC's one-stage KD on one micro-batch: the KD loss of ``model``'s outputs against the frozen teacher's on
        the same inputs (labels are not used), and the student's outputs."""
        if self.distillation is None:
            raise ValueError("compression_training.knowledge_distillation is not enabled")
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        student_outputs = model(**inputs, **self.distillation.model_kwargs)
        return self.distillation(student_outputs, self.teacher_outputs(**inputs)), student_outputs

    def student_loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one micro-batch of the student ``model`` (the engine): :meth:`distilled` with
        knowledge distillation, else the model's own loss from ``batch["labels"]``."""
        if self.distillation is None:
            return model(**batch).loss
        return self.distilled(model, batch)[0]

    def may_pick_best(self, step: int, total_steps: int) -> bool:
        """Whether a dev score at ``step`` may make its checkpoint the best: only once the compression schedule is
        final (bits, pruning ratios), or at the last step; an earlier score is not that of the model that
        ``redundancy_clean`` bakes."""
        return self.scheduler.settled or step >= total_steps


def _config_source(args: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    sources = [config, kwargs.pop("config_params", None)]
    for name in ("deepspeed_config", "deepscale_config"):
        sources.append(getattr(args, name, None))
    given = [source for source in sources if source is not None]
    if not given:
        raise ValueError("xtc_ds.initialize needs config= (path or dict) or args.deepspeed_config")
    if len(given) > 1:
        raise ValueError(
            "xtc_ds.initialize got the DeepSpeed config twice (config= and args.deepspeed_config); pass one"
        )
    return given[0]


def _attach(engine: Any, runtime: XtcRuntime) -> None:
    """Make the engine drive and checkpoint the compression schedule."""
    engine.xtc = runtime
    engine_step, engine_save, engine_load = engine.step, engine.save_checkpoint, engine.load_checkpoint

    @functools.wraps(engine_step)
    def step(*args: Any, **kwargs: Any) -> Any:
        result = engine_step(*args, **kwargs)
        if engine.was_step_applied():  # an optimizer update happened (boundary, no fp16 overflow)
            runtime.scheduler.step()
        return result

    @functools.wraps(engine_save)
    def save_checkpoint(save_dir: str, tag: Any = None, client_state: Optional[dict] = None, **kwargs: Any) -> Any:
        state = dict(client_state or {})
        state[CHECKPOINT_KEY] = runtime.scheduler.state_dict()
        return engine_save(save_dir, tag=tag, client_state=state, **kwargs)

    @functools.wraps(engine_load)
    def load_checkpoint(*args: Any, **kwargs: Any) -> Any:
        load_path, client_state = engine_load(*args, **kwargs)
        if load_path is not None:
            saved = (client_state or {}).pop(CHECKPOINT_KEY, None)
            if saved is None:
                log_rank_zero(
                    logging.WARNING,
                    f"xtc_ds: checkpoint {load_path} has no compression state; "
                    f"resuming the schedule at the engine's step {engine.global_steps}",
                )
                saved = {"step": engine.global_steps}
            runtime.scheduler.load_state_dict(saved)
        return load_path, client_state

    engine.step, engine.save_checkpoint, engine.load_checkpoint = step, save_checkpoint, load_checkpoint


def partitioned_teacher(teacher: nn.Module, ds_config: dict[str, Any], engine: Any) -> nn.Module:
    """``teacher`` with its parameters partitioned by ZeRO-3 (no optimizer: DeepSpeed's inference mode).

    The returned module gathers each layer's parameters for its forward and releases them after, like the
    student under ZeRO-3; precision follows the student's config.
    """
    import deepspeed

    student_zero = ds_config.get("zero_optimization", {})
    zero = {key: value for key, value in student_zero.items() if key.startswith("stage3_")} | {"stage": 3}
    teacher_config = {
        "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "zero_optimization": zero,
    }
    for precision in ("bf16", "fp16"):
        if precision in ds_config:
            teacher_config[precision] = ds_config[precision]
    teacher_engine, *_ = deepspeed.initialize(model=teacher, config=teacher_config)
    return teacher_engine.module.eval()


def prepare_models(
    model: nn.Module, compression: CompressionConfig, teacher_model: Optional[nn.Module], mpu: Any = None
) -> Optional[DistillationLoss]:
    """Inject compression into the student (initializing it from the teacher under layer reduction) and make
    both ready for KD: layer maps checked, eager attention where attention maps are distilled, teacher frozen.

    Returns:
        The KD loss when knowledge distillation is enabled, else None.
    """
    init_compression(model, compression, teacher_model=teacher_model, mpu=mpu)
    distillation = DistillationLoss(compression) if compression.knowledge_distillation.enabled else None
    if distillation is not None and teacher_model is not None:
        depths = [getattr(getattr(m, "config", None), "num_hidden_layers", None) for m in (model, teacher_model)]
        if None not in depths:  # Hugging Face models: check the layer maps now, not at the first KD step
            distillation.check_layers(*depths)
    if distillation is not None and compression.knowledge_distillation.attention_weight > 0:
        require_eager_attention(model)
        if teacher_model is not None:
            require_eager_attention(teacher_model)
    if teacher_model is not None:
        teacher_model.eval().requires_grad_(False)
    return distillation


def initialize(
    args: Any = None,
    model: Optional[nn.Module] = None,
    config: Any = None,
    teacher_model: Optional[nn.Module] = None,
    **kwargs: Any,
) -> tuple[Any, Any, Any, Any]:
    """``deepspeed.initialize`` for a model trained with XTC compression.

    Takes what ``deepspeed.initialize`` takes (``optimizer``, ``model_parameters``, ``training_data``,
    ``lr_scheduler``, ``mpu``, ...) plus ``teacher_model``, and returns the same
    ``(engine, optimizer, dataloader, lr_scheduler)``. The engine also has ``engine.xtc``
    (:class:`XtcRuntime`: config, scheduler, teacher, KD loss).

    Args:
        args: argparse namespace with ``deepspeed_config`` (as ``deepspeed.add_config_arguments`` makes).
        model: the student (already layer-reduced, e.g. by ``xtc_ds.build_student``, or initialized here
            from ``teacher_model`` when ``layer_reduction`` is enabled).
        config: DeepSpeed config path or dict (instead of ``args.deepspeed_config``).
        teacher_model: frozen teacher for KD and layer-reduction initialization; put in eval mode,
            gradients off, moved to the engine's device; its parameters are partitioned by ZeRO-3 when
            ``knowledge_distillation.teacher_zero3`` is set, else it is not wrapped by DeepSpeed.
    Example:
        >>> engine, _, _, _ = xtc_ds.initialize(model=student, config="ds_configs/ds_xtc.json",
        ...                                     teacher_model=teacher, model_parameters=student.parameters())
        >>> loss = engine.xtc.student_loss(engine, batch)  # KD against the teacher when configured
        >>> engine.backward(loss); engine.step()
    """
    import deepspeed

    if model is None:
        raise ValueError("xtc_ds.initialize needs model=")
    compression, ds_config = split_deepspeed_config(_config_source(args, config, kwargs))
    distillation = prepare_models(model, compression, teacher_model, mpu=kwargs.get("mpu"))
    ds_args = copy.copy(args)
    for name in ("deepspeed_config", "deepscale_config"):
        if hasattr(ds_args, name):
            setattr(ds_args, name, None)
    if not torch.distributed.is_initialized():  # deepspeed.initialize starts the process group itself
        map_mpi_environment()
        single_process_defaults()  # `python job.py`: a loopback one-process group, no MPI discovery
        prepare_deepspeed_ops()
    engine, optimizer, dataloader, lr_scheduler = deepspeed.initialize(
        args=ds_args, model=model, config=ds_config, **kwargs
    )
    release_shm_workspace()  # when deepspeed.initialize started the process group itself
    if teacher_model is not None:
        if compression.knowledge_distillation.teacher_zero3:
            teacher_model = partitioned_teacher(teacher_model, ds_config, engine)
        else:
            teacher_model.to(engine.device)
    _attach(engine, XtcRuntime(compression, CompressionScheduler(model), teacher_model, distillation))
    return engine, optimizer, dataloader, lr_scheduler
