"""What a run does when flags leave it open, chosen from the data and the model, and said before it starts.

``run_glue``-style defaults (sequence length 128, 3 epochs whatever the task) made the README's SST-2 job a
60-hour one on a 2-core CPU. Here each phase gets a budget of work instead:

- **sequence length**: the 99th percentile of the tokenized training texts, rounded up to a multiple of 8 and
  capped at 128 (and at the model's positions); dev sets are encoded up to their longest example under the
  same cap, so evaluation truncates nothing it need not. Batches are padded to their longest example only.
- **epochs**: as many as fit :data:`TEACHER_MINUTES` / :data:`STUDENT_MINUTES` of training on the reference
  machine (the project's 2-core CPU), from the measured token rates of MiniLM-L6 there, scaled by the model's
  size (layers x hidden^2), between the phase's least and most epochs. With augmentation the student's epochs
  count passes over the training rows and their variants.
- **augmentation** (:mod:`xtc_ds.augment`): :data:`AUGMENT_VARIANTS` variants per text for training sets under
  :data:`AUGMENT_MAX_ROWS` rows when the config distils (the variants have no labels; KD learns them from the
  teacher), off otherwise.

:func:`describe` prints the plan, with a time estimate per phase scaled by the CPU threads in use; the
progress bars then show the real ETA.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = [
    "SEQ_PERCENTILE",
    "SEQ_CAP",
    "TEACHER_MINUTES",
    "STUDENT_MINUTES",
    "AUGMENT_MAX_ROWS",
    "AUGMENT_VARIANTS",
    "PhasePlan",
    "AugmentPlan",
    "augment_plan",
    "token_lengths",
    "train_seq_length",
    "eval_seq_length",
    "sample_rows",
    "model_cost",
    "phase_plan",
    "augment_seconds",
    "EVALUATIONS_PER_PHASE",
    "eval_every",
    "describe",
]

SEQ_PERCENTILE = 99
SEQ_CAP = 128
_LENGTH_SAMPLE = 20000  # rows whose lengths decide the training sequence length (seeded sample)

TEACHER_MINUTES = 8.0
STUDENT_MINUTES = 28.0
"""Training minutes per phase on the reference machine that the default epochs aim at (start-up, the op build
of a first run and the final export come on top: a few minutes). SST-2 gets 0.5 and 2 epochs."""
_EPOCH_RANGE = {"teacher": (0.5, 5.0), "student": (1.0, 20.0), "augmented student": (0.2, 20.0)}
_REFERENCE_TOKENS_PER_S = {"teacher": 950.0, "student": 1050.0}
"""Tokens per second of MiniLM-L6 on the reference machine (2 CPU threads, SST-2 batches of 32 grouped by length,
dev evaluations every 250 steps included): fp32 fine-tuning, and 1-bit W / 8-bit A QAT (fused ops) with
one-stage KD. Measured in the run behind the README's main-job numbers (docs/RESULTS.md)."""
_REFERENCE_COST = 6 * 384**2  # MiniLM-L6: layers x hidden^2
_REFERENCE_THREADS = 2

AUGMENT_VARIANTS = 20
"""Variants per text (two texts for a pair) when augmentation is on by default (TinyBERT's N)."""
AUGMENT_MAX_ROWS = 10_000
"""Training sets with fewer rows are augmented by default (the small GLUE tasks: RTE 2.5k, MRPC 3.7k, STS-B 5.7k,
CoLA 8.6k); larger ones (SST-2, 67k) already give the student enough rows to learn from."""
_AUGMENT_ROWS_PER_S = 700.0
"""Rows per second of augmentation from embedding neighbours with 20 tries per row, the slower of two 2-core
machines: MRPC's 3,668 rows in 5 s on an AVX2-only EPYC (SST-2's 4,000 in 3 s on an AVX-512 one). A pair's 20 tries
per text count twice, which overestimates them (MRPC, 40 tries per row: 4 s on the AVX-512 machine)."""
_MASKED_LM_PASSES = 7
"""Forward passes per row of the masked-LM candidate source (:data:`xtc_ds.augment.candidates.MASK_SHARE`)."""
_FORWARD_SPEEDUP = 3.0
"""A forward pass without gradients against a training step, per token."""


EVALUATIONS_PER_PHASE = 10
"""Dev evaluations per phase when ``--eval_steps`` is not given. A 1-bit student's dev score swings by several points
between evaluations while its learning rate is high (MRPC: 67, 57, 50, 70 % at steps 100 to 400), so the best
checkpoint needs evaluations spread over the whole phase, not only at its end (500 steps was the fixed default:
two evaluations in MRPC's 924 student steps)."""
_EVAL_GRANULE = 25
_EVAL_MAX_INTERVAL = 500


def eval_every(total_steps: int, flag: Optional[int] = None) -> int:
    """Steps between dev evaluations: ``--eval_steps`` if given, else about :data:`EVALUATIONS_PER_PHASE` per phase
    (a multiple of 25 steps, at most 500)."""
    if flag is not None:
        return flag
    per_evaluation = math.ceil(total_steps / EVALUATIONS_PER_PHASE / _EVAL_GRANULE) * _EVAL_GRANULE
    return min(_EVAL_MAX_INTERVAL, max(_EVAL_GRANULE, per_evaluation))


def token_lengths(texts_a: list[str], texts_b: Optional[list[str]], tokenizer: Any) -> torch.Tensor:
    """Untruncated token counts (special tokens included) of one or two texts per example."""
    encoded = tokenizer(texts_a, texts_b, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    return torch.tensor([len(ids) for ids in encoded], dtype=torch.long)


def train_seq_length(lengths: torch.Tensor, model_positions: int) -> int:
    """The training max length from token counts: their 99th percentile rounded up to 8, at most 128."""
    percentile = torch.quantile(lengths.double(), SEQ_PERCENTILE / 100, interpolation="lower").item()
    return min(SEQ_CAP, model_positions, int(math.ceil(percentile / 8) * 8))


def eval_seq_length(lengths: torch.Tensor, model_positions: int) -> int:
    """The evaluation max length: the longest dev example, at most 128."""
    return min(SEQ_CAP, model_positions, int(lengths.max()))


def sample_rows(count: int, seed: int) -> list[int]:
    """The rows (all, or a seeded sample of 20000) whose lengths stand for the training set."""
    rows = list(range(count))
    return rows if count <= _LENGTH_SAMPLE else sorted(random.Random(seed).sample(rows, _LENGTH_SAMPLE))


def model_cost(config: Any, layers: Optional[int] = None) -> float:
    """Compute per token relative to MiniLM-L6 (``layers x hidden^2``), from a Hugging Face config."""
    depth = config.num_hidden_layers if layers is None else layers
    return depth * config.hidden_size**2 / _REFERENCE_COST


@dataclass(frozen=True)
class PhasePlan:
    """One phase's share of the work: epochs, and the reference-machine minutes they are estimated at."""

    name: str
    epochs: float
    epoch_tokens: float
    cost: float
    chosen: bool  # from the budget (True) or from a flag (False)
    eval_steps: Optional[int] = None  # steps between dev evaluations, when known
    eval_estimated: bool = False  # eval_steps from an estimate of the steps (augmented rows before they exist)

    @property
    def minutes(self) -> float:
        threads = max(1, torch.get_num_threads())
        rate = _REFERENCE_TOKENS_PER_S[self.name] * threads / _REFERENCE_THREADS
        return self.epochs * self.epoch_tokens * self.cost / rate / 60


def phase_plan(
    name: str, epoch_tokens: float, cost: float, epochs: Optional[float], augmented: bool = False
) -> PhasePlan:
    """The epochs of phase ``name`` (``teacher``/``student``): ``epochs`` if given, else what fits its budget.

    ``augmented``: the student's epoch holds the variants too, so less than one pass may fill the budget.
    """
    if epochs is not None:
        return PhasePlan(name, epochs, epoch_tokens, cost, chosen=False)
    minutes = TEACHER_MINUTES if name == "teacher" else STUDENT_MINUTES
    budget = minutes * 60 * _REFERENCE_TOKENS_PER_S[name] / cost
    low, high = _EPOCH_RANGE["augmented student" if augmented else name]
    fitted = min(high, max(low, budget / epoch_tokens))
    step = 0.1 if augmented and fitted < 1 else 0.5
    return PhasePlan(name, round(round(fitted / step) * step, 1), epoch_tokens, cost, chosen=True)


@dataclass(frozen=True)
class AugmentPlan:
    """Whether the student's training rows are augmented, how, and why."""

    variants: int
    reason: str
    seconds: float = 0.0

    def line(self) -> str:
        if not self.variants:
            return f"  augmentation: off ({self.reason})"
        took = f"{max(1, round(self.seconds))} s" if self.seconds < 60 else f"{round(self.seconds / 60)} min"
        return f"  augmentation: {self.variants} variants per text ({self.reason}), about {took}"


def augment_plan(rows: int, requested: Optional[int], distils: bool) -> AugmentPlan:
    """On or off, and why: ``--augment`` when given, else on for fewer than :data:`AUGMENT_MAX_ROWS` rows.

    Augmented rows have no labels, so without knowledge distillation nothing could learn them: off by default,
    and a requested ``--augment`` is the caller's error to raise.
    """
    if requested is not None:
        return AugmentPlan(requested, f"--augment {requested}")
    if not distils:
        return AugmentPlan(0, "the config does not distil; variants have no labels")
    if rows >= AUGMENT_MAX_ROWS:
        return AugmentPlan(0, f"auto: {rows} training rows, at least {AUGMENT_MAX_ROWS}")
    return AugmentPlan(AUGMENT_VARIANTS, f"auto: {rows} training rows, under {AUGMENT_MAX_ROWS}")


def augment_seconds(kind: str, rows: int, row_tokens: float, cost: float, variants: int) -> float:
    """Estimated seconds to augment ``rows`` rows with candidates from ``kind`` (embedding neighbours or a
    masked-LM head) on this machine's threads."""
    threads = max(1, torch.get_num_threads()) / _REFERENCE_THREADS
    seconds = rows * variants / AUGMENT_VARIANTS / _AUGMENT_ROWS_PER_S
    if kind == "masked_lm":
        forward = _REFERENCE_TOKENS_PER_S["teacher"] * _FORWARD_SPEEDUP / cost
        seconds += rows * _MASKED_LM_PASSES * row_tokens / forward
    return seconds / threads


def describe(
    task: str,
    rows: int,
    lengths: tuple[int, int],
    auto_length: bool,
    phases: list[PhasePlan],
    device: str,
    augment: Optional[AugmentPlan] = None,
    outputs: Optional[str] = None,
) -> str:
    """The plan as printed before training: data, sequence lengths, augmentation, each phase's epochs and estimated
    time."""
    how = f"auto: {SEQ_PERCENTILE}th percentile of train, cap {SEQ_CAP}" if auto_length else "--max_seq_length"
    lines = [f"xtc_ds plan: {task}, {rows} training rows; max_seq_length {lengths[0]} (dev {lengths[1]}; {how})"]
    on_cpu = device == "cpu"
    if augment is not None:
        lines.append(augment.line())
    for phase in phases:
        source = "budget" if phase.chosen else "flag"
        estimate = f", about {phase.minutes:.0f} min on {torch.get_num_threads()} CPU threads" if on_cpu else ""
        about = "about " if phase.eval_estimated else ""
        evaluations = f", dev {about}every {phase.eval_steps} steps" if phase.eval_steps else ""
        lines.append(f"  {phase.name}: {phase.epochs:g} epochs ({source}){evaluations}{estimate}")
    if on_cpu:
        total = sum(phase.minutes for phase in phases) + (augment.seconds / 60 if augment else 0.0)
        lines.append(f"  training about {total:.0f} min in all, plus evaluations and the export")
    if outputs:
        lines.append(outputs)
    lines.append("  (the progress bars show the real ETA)")
    return "\n".join(lines)
