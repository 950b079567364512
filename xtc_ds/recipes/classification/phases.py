"""The recipe's two training phases: teacher fine-tuning and the compressed student (the finish: :mod:`.finish`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from xtc_ds._log import is_rank_zero, logger
from xtc_ds.augment import AugmentedEdits, AugmentedRows
from xtc_ds.checkpoint_layout import LAYOUT_FILE, prepare_resume, read_layout
from xtc_ds.checkpoints import list_tags, resolve_source, select_tag
from xtc_ds.config import CompressionConfig
from xtc_ds.distributed import rank_and_world, rank_zero_decides
from xtc_ds.errors import CheckpointError
from xtc_ds.files import path_within, read_json, write_json_atomic
from xtc_ds.layer_reduction import build_student
from xtc_ds.recipes.classification.batches import EpochBatches
from xtc_ds.recipes.classification.io import PHASES
from xtc_ds.recipes.classification.models import load_model
from xtc_ds.recipes.classification.settings import PhaseSettings, RunConfig
from xtc_ds.recipes.classification.trainer import Phase, evaluate, run_phase
from xtc_ds.runtime import initialize
from xtc_ds.saved_state import save_compression_state

__all__ = [
    "total_steps",
    "resume_tag",
    "train_teacher",
    "train_student",
    "kd_needs_eager",
]


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_")
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if any(key in name for key in no_decay) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(epochs: float, max_steps: Optional[int], steps_per_epoch: int) -> int:
    return max_steps if max_steps is not None else max(1, math.ceil(epochs * steps_per_epoch))


def _checkpoint_phase(source: Path, run: RunConfig) -> str:
    """The phase an explicit ``--resume_from_checkpoint DIR`` belongs to: by its place, else by its record."""
    for phase in PHASES:
        if path_within(source, run.output_dir / phase):
            return phase
    for tag in (source, *list_tags(source)):
        if (tag / LAYOUT_FILE).is_file() and read_layout(tag).get("phase"):
            return read_layout(tag)["phase"]
    if run.teacher_model is not None:
        return "student"  # the only phase this run trains
    raise CheckpointError(
        f"--resume_from_checkpoint {source}: cannot tell whether it holds the teacher or the student (no "
        f"{LAYOUT_FILE} names its phase); pass --teacher_model to resume a student from it"
    )


def resume_tag(run: RunConfig, phase: str) -> Optional[Path]:
    """The verified checkpoint tag a phase resumes from, or None where the phase starts at step 0.

    An explicit ``DIR`` resumes the phase it belongs to; every other phase (and every phase under ``latest``)
    continues from its own newest complete checkpoint, so none silently starts over.
    """
    wanted = run.resume_from_checkpoint
    if wanted is None:
        return None
    if wanted != "latest":
        source = Path(wanted)
        if not source.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {wanted}: no such directory")
        if _checkpoint_phase(source, run) == phase:
            return rank_zero_decides(lambda: resolve_source(source))
    return rank_zero_decides(lambda: select_tag(run.output_dir / phase / "checkpoints"))


def _train(
    name: str,
    model: torch.nn.Module,
    ds_config: dict[str, Any],
    run: RunConfig,
    settings: PhaseSettings,
    train: AugmentedRows,
    dev: dict[str, Any],
    tokenizer: Any,
    loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    teacher: Optional[torch.nn.Module] = None,
    save_extra: Optional[Callable[[Any, Path], None]] = None,
) -> dict[str, Any]:
    """Set up the engine (optimizer, warm-up + linear decay, compression) for one phase and run it."""
    rank, world = rank_and_world()
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    lengths = train.lengths() if run.group_by_length else None
    batches = EpochBatches(len(train), micro, accum, rank, world, settings.seed, lengths)
    total = total_steps(settings.epochs, settings.max_steps, batches.steps_per_epoch)
    resume = resume_tag(run, name)
    if resume is not None:  # before the engine exists: a universal checkpoint is a config setting
        resume, universal = prepare_resume(resume, ds_config.get("zero_optimization", {}).get("stage", 0), world)
        if universal:
            ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    optimizer = _optimizer(model, settings.learning_rate, run.weight_decay)
    engine, *_ = initialize(
        model=model,
        config=ds_config,
        optimizer=optimizer,
        teacher_model=teacher,
        lr_scheduler=_linear_schedule(optimizer, total, run.warmup_ratio),
    )
    extra = None if save_extra is None else (lambda folder: save_extra(engine, folder))
    phase = Phase(name, run.output_dir / name, total, loss_fn, save_extra=extra)
    return run_phase(engine, phase, run.task, train, dev, batches, tokenizer, run.evaluation, resume=resume)


def train_teacher(run: RunConfig, ds_config: dict[str, Any], data: dict[str, Any], tokenizer: Any, model_path: str):
    """Fine-tune the teacher (uncompressed) unless an earlier run of this output dir completed it.

    Returns:
        The teacher's best folder and its best dev result.
    """
    directory = run.output_dir / "teacher"
    results_path = directory / "eval_results.json"
    if results_path.exists():
        logger.info("xtc_ds: teacher already fine-tuned in %s", directory)
        return str(directory / "best"), read_json(results_path)
    torch.manual_seed(run.seed)
    model = load_model(model_path, run.task, eager=False, new_head=True)
    best = _train(
        "teacher",
        model,
        ds_config,
        run,
        run.teacher,
        AugmentedRows(data["train"]),  # the teacher learns the labelled rows only
        data["dev"],
        tokenizer,
        lambda engine, batch: engine(**batch).loss,
    )
    if is_rank_zero():
        write_json_atomic(results_path, best)
    return str(directory / "best"), best


def kd_needs_eager(compression: CompressionConfig) -> bool:
    kd = compression.knowledge_distillation
    return kd.enabled and kd.attention_weight > 0  # attention maps are only returned by eager attention


def train_student(
    run: RunConfig,
    ds_config: dict[str, Any],
    compression: CompressionConfig,
    data: dict[str, Any],
    tokenizer: Any,
    teacher_path: str,
    augmented: Optional[AugmentedEdits] = None,
) -> dict[str, Any]:
    """Train the compressed student (with KD from the teacher when configured) on the training rows and their
    ``augmented`` variants, which KD learns from the teacher's outputs; returns its and the teacher's dev results."""
    kd = compression.knowledge_distillation
    teacher = load_model(teacher_path, run.task, eager=kd_needs_eager(compression))
    torch.manual_seed(run.seed)
    student = build_student(teacher, compression)

    def save_extra(engine: Any, folder: Path) -> None:
        save_compression_state(folder, engine.xtc.scheduler, compression)

    best = _train(
        "student",
        student,
        ds_config,
        run,
        run.student,
        AugmentedRows(data["train"], augmented),
        data["dev"],
        tokenizer,
        lambda engine, batch: engine.xtc.student_loss(engine, batch),
        teacher=teacher if kd.enabled else None,
        save_extra=save_extra,
    )
    if is_rank_zero():
        write_json_atomic(run.output_dir / "student" / "eval_results.json", best)
    evaluation = run.evaluation
    teacher_metrics = evaluate(teacher, data["dev"], run.task, evaluation.batch_size, evaluation.pad_to_max_length)
    return {"student_best": best, "teacher_dev": teacher_metrics}
