"""One training phase (teacher fine-tuning or student distillation) on a DeepSpeed engine.

Evaluates every ``eval_steps``, keeps the best dev checkpoint as a Hugging Face folder (among the evaluations
made once the compression schedule is final, or the last one), saves resumable
DeepSpeed checkpoints every ``save_steps`` (model, optimizer, LR schedule, compression schedule, RNG state,
data position) and resumes from them step for step.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from xtc_ds._compat import zero3_consolidated_state_dict
from xtc_ds._log import is_rank_zero, logger
from xtc_ds.augment import AugmentedRows
from xtc_ds.checkpoint_layout import LAYOUT_FILE, UNIVERSAL_DIR
from xtc_ds.checkpoints import list_tags, write_manifest
from xtc_ds.distributed import rank_and_world
from xtc_ds.errors import CheckpointError, TrainingError
from xtc_ds.files import append_jsonl, read_json, replace_dir_atomic, write_json_atomic
from xtc_ds.recipes.classification.batches import EpochBatches
from xtc_ds.recipes.classification.data import TaskSpec, primary_score, task_metrics, trim_padding
from xtc_ds.recipes.classification.plan import eval_every
from xtc_ds.recipes.classification.settings import EvalSettings

__all__ = ["Phase", "predict_logits", "evaluate", "run_phase", "full_state_dict", "PIPELINE_STATE_KEY"]

PIPELINE_STATE_KEY = "xtc_pipeline"
BEST_META = "xtc_best.json"


@dataclass
class Phase:
    """What one phase trains and where it writes.

    Attributes:
        name: ``teacher`` or ``student`` (the folder under ``output_dir``).
        directory: ``output_dir / name``.
        total_steps: optimizer steps of the phase.
        loss_fn: ``(engine, batch) -> loss`` for one micro-batch.
        save_extra: ``(folder) -> None`` adds files to each saved best folder.
    """

    name: str
    directory: Path
    total_steps: int
    loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
    save_extra: Optional[Callable[[Path], None]] = None
    best: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        return self.directory / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.directory / "train_log.jsonl"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def predict_logits(
    model: nn.Module, tensors: dict[str, torch.Tensor], batch_size: int, pad_to_max_length: bool = False
) -> torch.Tensor:
    """The model's float32 logits on CPU for every row of ``tensors`` (``labels`` ignored); ``model`` may be a
    DeepSpeed engine. Restores the model's train/eval mode.

    Each batch is cut to its longest example unless ``pad_to_max_length``.
    """
    was_training = model.training
    model.eval()
    device = getattr(model, "device", None) or next(model.parameters()).device
    inputs = {k: v for k, v in tensors.items() if k != "labels"}
    rows = len(inputs["input_ids"])
    logits = []
    with torch.no_grad():
        for i in range(0, rows, batch_size):
            batch = {k: v[i : i + batch_size] for k, v in inputs.items()}
            if not pad_to_max_length:
                batch = trim_padding(batch)
            logits.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    model.train(was_training)
    return torch.cat(logits)


def evaluate(
    model: nn.Module,
    dev_sets: dict[str, dict[str, torch.Tensor]],
    task: TaskSpec,
    batch_size: int,
    pad_to_max_length: bool = False,
) -> dict[str, dict[str, float]]:
    """The task's metrics per dev split; ``model`` may be a DeepSpeed engine."""
    return {
        split: task_metrics(task, predict_logits(model, tensors, batch_size, pad_to_max_length), tensors["labels"])
        for split, tensors in dev_sets.items()
    }


def full_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The model's complete state dict on rank 0 (ZeRO-3 partitions gathered; every rank must call this)."""
    if engine.zero_optimization_stage() == 3:
        return zero3_consolidated_state_dict(engine)
    return engine.module.state_dict()


def _rng_states() -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _save_best(engine: Any, phase: Phase, tokenizer: Any, step: int, score: float, metrics: dict) -> None:
    state_dict = full_state_dict(engine)
    if is_rank_zero():

        def fill(folder: Path) -> None:
            engine.module.save_pretrained(folder, state_dict=state_dict)
            tokenizer.save_pretrained(folder)
            if phase.save_extra is not None:
                phase.save_extra(folder)
            write_json_atomic(folder / BEST_META, {"step": step, "score": score, "metrics": metrics})

        replace_dir_atomic(phase.directory / "best", fill)
    _barrier()


def _save_checkpoint(engine: Any, phase: Phase, batches: EpochBatches, step: int, keep: int) -> None:
    epoch, in_epoch = batches.position(step)
    client_state = {
        PIPELINE_STATE_KEY: {
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "group_by_length": batches.lengths is not None,
            "best": phase.best,
        },
        "rng": _rng_states(),
    }
    tag_dir = phase.checkpoints / f"global_step{step}"
    engine.save_checkpoint(str(phase.checkpoints), tag=tag_dir.name, client_state=client_state)
    _barrier()  # every rank's files are written before rank 0 lists them
    if is_rank_zero():
        layout = {
            "zero_stage": engine.zero_optimization_stage(),
            "world_size": rank_and_world()[1],
            "phase": phase.name,
        }
        write_json_atomic(tag_dir / LAYOUT_FILE, layout)
        write_manifest(tag_dir)
        for stale in list_tags(phase.checkpoints)[keep:]:
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(phase.checkpoints / UNIVERSAL_DIR, ignore_errors=True)  # resumed from, now superseded
    _barrier()


def _global_mean(value: float, device: torch.device) -> float:
    """The mean of a per-rank number over all ranks: the logged loss is the whole global batch's."""
    if rank_and_world()[1] == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / rank_and_world()[1]


def _resume(engine: Any, phase: Phase, tag_dir: Path, batches: EpochBatches) -> int:
    """Load a verified checkpoint tag folder and return the step to continue from."""
    try:
        load_path, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except Exception as err:  # DeepSpeed's own errors for a checkpoint it cannot take
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load it ({type(err).__name__}: {err})") from None
    if load_path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed found no loadable checkpoint there")
    step = engine.global_steps
    saved = client_state.get(PIPELINE_STATE_KEY, {})
    position = (saved.get("epoch"), saved.get("step_in_epoch"), saved.get("group_by_length", False))
    if position != (*batches.position(step), batches.lengths is not None):
        logger.warning(
            "xtc_ds: batch size, world size or --group_by_length changed since the checkpoint; the data order differs"
        )
    phase.best = dict(saved.get("best", {}))
    rng = client_state.get("rng", [])
    rank = rank_and_world()[0]
    if len(rng) == rank_and_world()[1]:
        torch.set_rng_state(rng[rank])
    if is_rank_zero():
        folder = Path(load_path).parent if Path(load_path).is_file() else Path(load_path)  # DeepSpeed names a file
        append_jsonl(phase.log_path, {"resumed_from": str(folder), "step": step})
    return step


def may_pick_best(engine: Any, step: int, total_steps: int) -> bool:
    """Whether ``engine``'s dev score at ``step`` may pick the best checkpoint (:meth:`XtcRuntime.may_pick_best`;
    always for an engine without compression)."""
    xtc = getattr(engine, "xtc", None)
    return xtc is None or xtc.may_pick_best(step, total_steps)


def run_phase(
    engine: Any,
    phase: Phase,
    task: TaskSpec,
    train: AugmentedRows,
    dev_sets: dict[str, dict[str, torch.Tensor]],
    batches: EpochBatches,
    tokenizer: Any,
    evaluation: EvalSettings,
    resume: Optional[Path] = None,
) -> dict[str, Any]:
    """Train ``engine`` for ``phase.total_steps`` optimizer steps; returns the best dev result.

    Returns:
        ``{"step": ..., "score": ..., "metrics": {split: {...}}, "wall_time_s": ..., "steps": ...}``.
    """
    from tqdm.auto import tqdm

    start = _resume(engine, phase, resume, batches) if resume is not None else 0
    best_meta = phase.directory / "best" / BEST_META
    if best_meta.exists():  # a best folder written after the checkpoint we resumed from still counts
        previous = read_json(best_meta)
        if previous.get("score", -math.inf) > phase.best.get("score", -math.inf):
            phase.best = previous
    engine.train()
    device = engine.device
    rank_zero = is_rank_zero()
    eval_steps = eval_every(phase.total_steps, evaluation.eval_steps)
    if rank_zero:
        logger.info("xtc_ds %s: %d steps, dev evaluation every %d", phase.name, phase.total_steps, eval_steps)
    progress = tqdm(total=phase.total_steps, initial=start, desc=phase.name, disable=not rank_zero, dynamic_ncols=True)
    samples_per_step = engine.train_batch_size()
    began = time.time()
    last_time = began
    for step, micro_batches in batches.iterate(start, phase.total_steps):
        losses = []
        for indices in micro_batches:
            batch = train.batch(indices)
            if not evaluation.pad_to_max_length:
                batch = trim_padding(batch)
            batch = {key: value.to(device) for key, value in batch.items()}
            loss = phase.loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        done = step + 1
        now = time.time()
        record = {
            "step": done,
            "loss": _global_mean(sum(losses) / len(losses), device),
            "lr": engine.get_lr()[0],
            "samples_per_s": samples_per_step / max(now - last_time, 1e-9),
        }
        last_time = now
        if engine.monitor.enabled:  # DeepSpeed >= 0.19 no longer logs the loss itself
            engine.monitor.write_events([("Train/Samples/train_step_loss", record["loss"], engine.global_samples)])
        if rank_zero:
            append_jsonl(phase.log_path, record)
            progress.update(1)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.1f}"
            )
        elif done % max(1, engine.steps_per_print() or 100) == 0:
            logger.info("xtc_ds %s step %d loss %.4f", phase.name, done, record["loss"])
        if done % eval_steps == 0 or done == phase.total_steps:
            metrics = evaluate(engine, dev_sets, task, evaluation.batch_size, evaluation.pad_to_max_length)
            score = primary_score(task, next(iter(metrics.values())))
            if rank_zero:
                append_jsonl(phase.log_path, {"step": done, "eval": metrics, "score": score})
                logger.info("xtc_ds %s step %d eval %s", phase.name, done, metrics)
            if engine.monitor.enabled:
                engine.monitor.write_events(
                    [
                        (f"Eval/{split}/{k}", v, engine.global_samples)
                        for split, m in metrics.items()
                        for k, v in m.items()
                    ]
                )
            if not may_pick_best(engine, done, phase.total_steps):
                if rank_zero:
                    logger.info(
                        "xtc_ds %s step %d: not a best-checkpoint candidate (the compression schedule still changes "
                        "the model: quantization bits or pruning ratios are not final yet)",
                        phase.name,
                        done,
                    )
            elif math.isfinite(score) and score > phase.best.get("score", -math.inf):
                phase.best = {"step": done, "score": score, "metrics": metrics}
                _save_best(engine, phase, tokenizer, done, score, metrics)
        if done % evaluation.save_steps == 0 or done == phase.total_steps:
            _save_checkpoint(engine, phase, batches, done, evaluation.save_total_limit)
    progress.close()
    if not phase.best:
        raise TrainingError(
            f"{phase.name}: no dev evaluation gave a finite score in {phase.total_steps} steps, so there is no best "
            f"checkpoint and the phase is not complete (see {phase.log_path}; a NaN loss points at bad labels or "
            "too high a learning rate)"
        )
    wall = time.time() - began
    if rank_zero:
        logger.info("xtc_ds %s finished %d steps in %.0f s", phase.name, phase.total_steps, wall)
    return {**phase.best, "wall_time_s": wall, "steps": phase.total_steps}
