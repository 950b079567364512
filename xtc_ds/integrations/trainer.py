"""XTC in a Hugging Face ``Trainer`` job: swap ``TrainingArguments`` and ``Trainer`` for
:class:`XtcTrainingArguments` and :class:`XtcTrainer`, and add a ``compression_training`` section to the DeepSpeed
config the job already passes (``--deepspeed ds.json``).

What they do that the plain classes cannot:

- take the section out of the DeepSpeed config as soon as the arguments exist, before DeepSpeed sees it
  (DeepSpeed 0.19 refuses it, also in the ``zero.Init`` that loads a model under ZeRO-3), and inject compression
  into the model before the optimizer is built and ZeRO partitions it;
- advances the compression schedule on every optimizer step (after gradient accumulation), through a callback;
- trains on XTC's one-stage KD loss against ``teacher_model`` when ``knowledge_distillation`` is enabled (eager
  attention switched on where attention maps are distilled); evaluation keeps the task loss;
- writes the schedule state (``xtc_scheduler.pt``) and the config (``xtc_compression.json``) into every saved
  model and checkpoint, and restores them on ``train(resume_from_checkpoint=...)`` and
  ``load_best_model_at_end``; a checkpoint without them is an error, never a silent restart of the schedule;
- with ``load_best_model_at_end``, counts an evaluation for the best checkpoint only once the compression
  schedule is final (or at the last step);
- ``save_packed(dir)`` bakes the quantized weights and writes the packed export in one call;
- with ``augmentation=AugmentSettings(...)``, trains on the training rows followed by TinyBERT-style variants of
  them (:mod:`xtc_ds.augment`, cached in ``output_dir/augmented``), which carry no label and are learned from the
  teacher by the KD loss.

Without DeepSpeed (a plain CPU or single-GPU Trainer) name the config with ``--compression_config ds.json``.
``XtcTrainer`` also takes plain ``TrainingArguments`` at ZeRO 0-2 (under ZeRO-3 a model loaded after them would
meet DeepSpeed's refusal first).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from xtc_ds._compat import set_accelerate_world
from xtc_ds._log import log_rank_zero
from xtc_ds.augment import AugmentedDataset, Augmenter, AugmentSettings, ListRows
from xtc_ds.compress import redundancy_clean
from xtc_ds.config import SECTION, CompressionConfig, ConfigError, load_compression_config
from xtc_ds.export import export_packed
from xtc_ds.runtime import XtcRuntime, partitioned_teacher, prepare_models
from xtc_ds.saved_state import COMPRESSION_FILE, SCHEDULER_FILE, load_compression_state, save_compression_state
from xtc_ds.schedule import CompressionScheduler
from xtc_ds.state import compression_state, config_differences

__all__ = ["XtcTrainer", "XtcTrainingArguments", "XtcScheduleCallback", "SCHEDULER_FILE", "COMPRESSION_FILE"]


class XtcScheduleCallback(TrainerCallback):
    """Advances the compression schedule once per optimizer step (Trainer calls ``on_step_end`` after the
    update, so gradient accumulation counts as one step)."""

    def __init__(self, scheduler: CompressionScheduler) -> None:
        self.scheduler = scheduler

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.scheduler.step()
        return control


def _take_section(args: Any) -> Optional[dict[str, Any]]:
    """Remove the section from the DeepSpeed config of ``args`` (the dict Trainer, accelerate and ``zero.Init``
    hand to DeepSpeed) and keep it on that config object; returns it, or None without one."""
    hf_ds = getattr(args, "hf_deepspeed_config", None)
    if hf_ds is None:
        return None
    if SECTION in hf_ds.config:
        hf_ds.xtc_section = {SECTION: hf_ds.config.pop(SECTION)}
    return getattr(hf_ds, "xtc_section", None)


def _section(args: Any, compression_config: Any) -> CompressionConfig:
    """The compression config from every place that names one: ``args.deepspeed``'s section,
    ``args.compression_config`` and the ``compression_config=`` argument; where several do, they must agree."""
    sources: dict[str, Any] = {}
    from_deepspeed = _take_section(args)
    if from_deepspeed is not None:
        sources[f"the {SECTION} section of {args.deepspeed!r}"] = from_deepspeed
    if getattr(args, "compression_config", None) is not None:
        sources[f"--compression_config {args.compression_config}"] = args.compression_config
    if compression_config is not None:
        sources["compression_config="] = compression_config
    if not sources:
        where = f"the DeepSpeed config {args.deepspeed!r}" if args.deepspeed else "TrainingArguments (no --deepspeed)"
        raise ConfigError(
            f"XtcTrainer: no {SECTION} section in {where}; add one (see ds_configs/), or pass --compression_config "
            "(XtcTrainingArguments) or compression_config="
        )
    configs = {name: load_compression_config(source) for name, source in sources.items()}
    (first_name, config), *others = configs.items()
    for name, other in others:
        differences = config_differences(config, other)
        if differences:
            raise ConfigError(f"XtcTrainer: {name} differs from {first_name}: " + "; ".join(differences))
    if not config.enabled:
        raise ConfigError(f"XtcTrainer: the {SECTION} section enables nothing; use transformers.Trainer instead")
    return config


def _count_deepspeed_cpu_ranks(args: Any) -> None:
    """Give accelerate the real rank and world size of a DeepSpeed launch on CPUs.

    accelerate only picks a process-group backend for GPUs (or for ``use_cpu``, which turns DeepSpeed off), so on a
    machine without GPUs every rank of ``deepspeed --num_gpus 2 train.py --deepspeed ds.json`` believes it is rank
    0 of 1, although DeepSpeed has started the process group: batches are not sharded and rank 1 writes rank 0's
    files. Copy the process group's numbers into accelerate's shared state before Trainer builds on it, and
    redo the ``train_batch_size`` that ``TrainingArguments`` filled in for one process.
    """
    state = getattr(args, "distributed_state", None)
    if not args.deepspeed or state is None or not torch.distributed.is_initialized():
        return
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if state.num_processes == world:
        return
    backend = torch.distributed.get_backend()
    set_accelerate_world(state, backend, world, rank, int(os.environ.get("LOCAL_RANK", rank)))
    ds_config = args.hf_deepspeed_config.config
    per_process = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if ds_config.get("train_batch_size") == per_process:
        ds_config["train_batch_size"] = per_process * world
    log_rank_zero(logging.INFO, f"xtc_ds: DeepSpeed on CPUs: Trainer runs as {world} ranks ({backend})")


def _augmented(
    args: Any,
    config: CompressionConfig,
    settings: AugmentSettings,
    model_path: Optional[str],
    teacher: Optional[nn.Module],
    kwargs: dict[str, Any],
) -> AugmentedDataset:
    """``train_dataset`` followed by its variants, computed by the main process of each node (or read from
    ``output_dir/augmented``) before the others read them."""
    if not config.knowledge_distillation.enabled:
        raise ConfigError(
            f"XtcTrainer(augmentation=...): augmented rows have no labels and are learned from the teacher by "
            f"knowledge distillation, which {SECTION}.knowledge_distillation does not enable"
        )
    dataset = kwargs.get("train_dataset")
    tokenizer = kwargs.get("processing_class", kwargs.get("tokenizer"))
    if dataset is None or tokenizer is None:
        raise ValueError("XtcTrainer(augmentation=...) needs train_dataset= and processing_class= (the tokenizer)")
    model_path = model_path or getattr(teacher, "name_or_path", None)
    if not model_path or not Path(model_path, "config.json").is_file():
        raise ValueError(
            f"XtcTrainer(augmentation=...): no model folder to draw replacement words from (the teacher was loaded "
            f"from {model_path!r}); pass augment_model= (a Hugging Face model folder)"
        )
    with args.main_process_first(local=True, desc="xtc_ds augmentation"):
        edits = Augmenter(tokenizer, model_path, settings)(
            ListRows(dataset), Path(args.output_dir) / "augmented", progress=args.should_log
        )
    log_rank_zero(logging.INFO, f"xtc_ds: XtcTrainer trains on {len(dataset)} rows and {len(edits)} variants")
    return AugmentedDataset(dataset, edits)


def _is_partitioned(model: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


@dataclass
class XtcTrainingArguments(TrainingArguments):
    """``TrainingArguments`` that take the ``compression_training`` section out of ``--deepspeed`` at once (so
    models loaded next, under ZeRO-3's ``zero.Init`` too, never hand it to DeepSpeed), count DeepSpeed's ranks on
    machines without GPUs, and add ``--compression_config`` for jobs without DeepSpeed."""

    compression_config: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON file with the compression_training section, for a job without --deepspeed (with it, "
            "the section goes into the DeepSpeed config)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _take_section(self)
        _count_deepspeed_cpu_ranks(self)

    def compression(self) -> CompressionConfig:
        """This job's ``compression_training`` config (``--deepspeed``'s section or ``--compression_config``),
        e.g. for ``xtc_ds.build_student(teacher, args.compression())``."""
        return _section(self, None)


class XtcTrainer(Trainer):
    """``transformers.Trainer`` that trains the model with XTC compression (see the module docstring).

    Args:
        model: the student: a Hugging Face model, already layer-reduced (``xtc_ds.build_student(teacher, cfg)``)
            when ``layer_reduction`` is enabled.
        args: :class:`XtcTrainingArguments` (or ``TrainingArguments`` at ZeRO 0-2); its ``deepspeed`` config or
            ``compression_config`` holds the ``compression_training`` section.
        teacher_model: the frozen teacher for ``knowledge_distillation`` (and layer-reduction initialization).
        compression_config: the ``compression_training`` config (path, dict or ``CompressionConfig``) when
            ``args`` does not name it; if both do, they must agree.
        augmentation: augment the tokenized ``train_dataset`` (given by keyword, with ``processing_class``) with
            this many variants per text etc.; needs ``knowledge_distillation`` (variants have no labels).
        augment_model: the checkpoint folder whose masked-LM head, else input embeddings, proposes replacement
            words (default: the folder ``teacher_model`` was loaded from).
        **kwargs: everything else ``Trainer`` takes.

    Example:
        >>> trainer = XtcTrainer(model=student, args=XtcTrainingArguments(..., deepspeed="ds_xtc.json"),
        ...                      teacher_model=teacher, train_dataset=train, eval_dataset=dev)
        >>> trainer.train()
        >>> trainer.save_packed("packed")  # redundancy_clean + export_packed
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        args: Any = None,
        *trainer_args: Any,
        teacher_model: Optional[nn.Module] = None,
        compression_config: Any = None,
        augmentation: Optional[AugmentSettings] = None,
        augment_model: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("XtcTrainer needs model= (model_init is not supported: compression is injected once)")
        if args is None:
            raise ValueError("XtcTrainer needs args= (TrainingArguments)")
        _count_deepspeed_cpu_ranks(args)
        config = _section(args, compression_config)
        uses_teacher = config.knowledge_distillation.enabled or config.layer_reduction.enabled
        if config.knowledge_distillation.enabled and teacher_model is None:
            raise ConfigError(f"{SECTION}.knowledge_distillation.enabled: true, but XtcTrainer got no teacher_model=")
        if teacher_model is not None and not uses_teacher:
            raise ValueError(
                f"XtcTrainer: teacher_model= given but {SECTION} enables neither knowledge_distillation nor "
                "layer_reduction, so it would not be used"
            )
        if augmentation is not None:
            kwargs["train_dataset"] = _augmented(args, config, augmentation, augment_model, teacher_model, kwargs)
        distillation = prepare_models(model, config, teacher_model)
        self.xtc = XtcRuntime(config, CompressionScheduler(model), teacher_model, distillation)
        self._teacher_placed = teacher_model is None
        callbacks = [*(kwargs.pop("callbacks", None) or []), XtcScheduleCallback(self.xtc.scheduler)]
        super().__init__(model, args, *trainer_args, callbacks=callbacks, **kwargs)
        if distillation is not None:
            self.loss_is_scaled_for_ga = False  # the KD loss is a per-batch mean: Trainer divides it for GA
        report = compression_state(model).report.summary().replace("\n", "; ")
        log_rank_zero(logging.INFO, f"xtc_ds: XtcTrainer compresses {type(model).__name__}: {report}")

    def _place_teacher(self) -> None:
        """Put the teacher where the student runs, once: on its device, or behind a ZeRO-3 inference engine when
        its parameters are partitioned (a teacher loaded under ZeRO-3's ``zero.Init``) or ``teacher_zero3`` asks."""
        teacher = self.xtc.teacher
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        if _is_partitioned(teacher) or (zero3 and self.xtc.config.knowledge_distillation.teacher_zero3):
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            self.xtc.teacher = partitioned_teacher(teacher, ds_config, self.model_wrapped)
        else:
            teacher.to(self.args.device)
        self._teacher_placed = True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[Union[torch.Tensor, int]] = None,
    ) -> Any:
        """Training with KD: XTC's one-stage distillation loss against the teacher (labels unused). Otherwise,
        and in evaluation, the model's own loss."""
        if self.xtc.distillation is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self._teacher_placed:
            self._place_teacher()
        loss, outputs = self.xtc.distilled(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save as ``Trainer`` does, plus the compression state and config beside the weights."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            save_compression_state(output_dir or self.args.output_dir, self.xtc.scheduler, self.xtc.config)

    def train(self, resume_from_checkpoint: Optional[Union[str, bool]] = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a resumed run also restores the compression schedule of its checkpoint."""
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # Trainer names a miss
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            load_compression_state(resume_from_checkpoint, self.xtc.scheduler)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        load_compression_state(self.state.best_model_checkpoint, self.xtc.scheduler)

    def _best_candidate(self) -> bool:
        """Whether this evaluation may make its checkpoint the best (:meth:`XtcRuntime.may_pick_best`)."""
        return self.xtc.may_pick_best(self.state.global_step, self.state.max_steps)

    def _determine_best_metric(self, metrics: dict[str, float], trial: Any) -> bool:
        """transformers >= 4.48 picks the best checkpoint here."""
        return self._best_candidate() and super()._determine_best_metric(metrics, trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any, **kwargs: Any) -> None:
        """transformers < 4.48 picks the best checkpoint here, from ``metrics``."""
        if kwargs.get("metrics") is not None and not self._best_candidate():
            kwargs["metrics"] = None
        super()._save_checkpoint(model, trial, **kwargs)

    def save_packed(self, output_dir: Union[str, Path], dtype: torch.dtype = torch.float32) -> Optional[Path]:
        """Bake the quantized weights (``redundancy_clean``) and write the packed export (``export_packed``) with
        the tokenizer; every rank must call it. The model cannot be trained further afterwards.

        Returns:
            The folder on the main process, None on the others.
        """
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        redundancy_clean(model, self.xtc.config)
        return export_packed(model, None, output_dir, tokenizer=self.processing_class, dtype=dtype)
