"""The run's settings, built once from the flags after the plan filled in what they left open.

Everything below ``main`` takes these frozen, typed records instead of the flag namespace, so what a phase
depends on is visible in its signature.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from xtc_ds.recipes.classification.data import TaskSpec

__all__ = ["PhaseSettings", "EvalSettings", "RunConfig"]


@dataclass(frozen=True)
class PhaseSettings:
    """How long and how fast one phase (teacher or student) trains."""

    epochs: float
    max_steps: Optional[int]
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class EvalSettings:
    """When a phase evaluates and checkpoints, and how it batches the dev sets."""

    eval_steps: Optional[int]  # None: about ten per phase (:func:`~xtc_ds.recipes.classification.plan.eval_every`)
    save_steps: int
    save_total_limit: int
    batch_size: int
    pad_to_max_length: bool


@dataclass(frozen=True)
class RunConfig:
    """One run of the recipe.

    Attributes:
        task: the GLUE task.
        output_dir: where everything is written (:mod:`xtc_ds.recipes.classification.io`).
        seed: the seed of model initialization; each phase's batch order has its own (``teacher.seed``, ...).
        teacher_model: a fine-tuned teacher to use instead of training one.
        resume_from_checkpoint: ``latest``, a checkpoint folder, or None.
        teacher, student: each phase's length, learning rate and seed (the student's seed is the run's + 1).
        weight_decay, warmup_ratio: AdamW's decay and the linear schedule's warm-up fraction.
        group_by_length: length-grouped batches (:class:`~xtc_ds.recipes.classification.batches.EpochBatches`).
        evaluation: evaluation and checkpoint cadence.
        packed_dtype: storage of the unquantized tensors of the packed export.
    """

    task: TaskSpec
    output_dir: Path
    seed: int
    teacher_model: Optional[str]
    resume_from_checkpoint: Optional[str]
    teacher: PhaseSettings
    student: PhaseSettings
    weight_decay: float
    warmup_ratio: float
    group_by_length: bool
    evaluation: EvalSettings
    packed_dtype: torch.dtype

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The settings of parsed, checked and planned flags (``args.task`` and ``args.output_dir`` set)."""
        teacher_epochs = args.teacher_num_train_epochs
        return cls(
            task=args.task,
            output_dir=Path(args.output_dir),
            seed=args.seed,
            teacher_model=args.teacher_model,
            resume_from_checkpoint=args.resume_from_checkpoint,
            teacher=PhaseSettings(
                epochs=teacher_epochs if teacher_epochs is not None else args.num_train_epochs,
                max_steps=args.teacher_max_train_steps,
                learning_rate=args.teacher_learning_rate,
                seed=args.seed,
            ),
            student=PhaseSettings(
                epochs=args.num_train_epochs,
                max_steps=args.max_train_steps,
                learning_rate=args.learning_rate,
                seed=args.seed + 1,
            ),
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            group_by_length=args.group_by_length,
            evaluation=EvalSettings(
                eval_steps=args.eval_steps,
                save_steps=args.save_steps,
                save_total_limit=args.save_total_limit,
                batch_size=args.per_device_eval_batch_size,
                pad_to_max_length=args.pad_to_max_length,
            ),
            packed_dtype=getattr(torch, args.packed_dtype),
        )
