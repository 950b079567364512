"""Output-directory layout of a run.

Layout of ``--output_dir``::

    args.json                 the flags of the first run (resumes append to run_log.jsonl)
    run_log.jsonl             one line per start/resume
    teacher/                  only when the teacher is fine-tuned here
      checkpoints/            DeepSpeed checkpoints (global_stepN/, latest; universal/ while resharding)
      best/                   best dev checkpoint as a Hugging Face folder
      train_log.jsonl         step, loss, lr per optimizer step; eval results
      eval_results.json       written when the phase is complete
    student/                  same layout; best/ holds full-precision master weights + xtc_scheduler.pt
    final/                    the redundancy_clean'ed student: Hugging Face folder + xtc_compression.json
    packed/                   the same student packed (xtc_ds.export_packed)
    augmented/                the student's augmented rows (xtc_ds.augment), reused by a resumed run
    report.md, report/        the run's summary and pictures (launch/report.py renders them again)
    predictions.tsv           --do_predict: the packed model's prediction for each test row (index, prediction)
    eval_results.json         teacher, best student and final-model metrics, steps and wall time

``--overwrite_output_dir`` removes exactly these names (:data:`RUN_OUTPUTS`); anything else a user keeps in the
folder stays. Every file and folder here is written atomically (:mod:`xtc_ds.files`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from xtc_ds._log import announce, is_rank_zero
from xtc_ds.errors import OutputDirError
from xtc_ds.files import path_within, read_json, remove_path, remove_stale_temporaries
from xtc_ds.recipes.classification.data import data_name

__all__ = ["RUN_OUTPUTS", "PHASES", "AUGMENT_DIR", "remove_run_temporaries", "check_output_dir", "prepare_output_dir"]

RUN_OUTPUTS = (
    "args.json",
    "run_log.jsonl",
    "teacher",
    "student",
    "final",
    "packed",
    "eval_results.json",
    "predictions.tsv",
    "augmented",
    "report.md",
    "report",
)
"""What a run writes at the top of its output directory, and all that ``--overwrite_output_dir`` removes."""
PHASES = ("teacher", "student")
AUGMENT_DIR = "augmented"
_PHASE_ATOMIC = ("best", "eval_results.json")  # written atomically inside a phase folder


def remove_run_temporaries(out: Path) -> None:
    """:func:`remove_stale_temporaries` for every file and folder a run writes atomically under ``out``."""
    targets = [out / name for name in RUN_OUTPUTS]
    targets += [out / phase / name for phase in PHASES for name in _PHASE_ATOMIC]
    for target in targets:
        remove_stale_temporaries(target, legacy=True)


_SAME_RUN_FLAGS = {  # flag -> its value in an args.json written before the flag existed
    "task_name": None,
    "train_file": None,
    "validation_file": None,
    "dataset_name": None,
    "dataset_config_name": None,
    "text_column_names": None,
    "label_column_name": "label",
    "do_regression": False,
    "deepspeed_config": None,
    "model_name_or_path": None,
    "teacher_model": None,
    "seed": None,
}


def check_output_dir(args: Any) -> None:
    """Decide what happens to ``--output_dir`` before anything starts; nothing is changed yet.

    The default folder is ``out/<data>-<config name>`` (:func:`~.data.data_name`). A folder holding an earlier
    run of the same job (its ``args.json`` records the same data, config, models and seed) is continued from its
    checkpoints, as ``run_glue`` does; any other non-empty folder needs ``--overwrite_output_dir`` or
    ``--resume_from_checkpoint``.
    """
    if args.output_dir is None:
        args.output_dir = str(Path("out") / f"{data_name(args)}-{Path(args.deepspeed_config).stem}")
    out = Path(args.output_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputDirError(f"--output_dir {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()) or args.resume_from_checkpoint is not None:
        return
    if args.overwrite_output_dir:
        earlier = [out / name for name in RUN_OUTPUTS if os.path.lexists(out / name)]
        for flag in ("teacher_model", "model_name_or_path"):
            wanted = getattr(args, flag)
            if wanted and any(path_within(Path(wanted), path) for path in earlier):
                raise OutputDirError(
                    f"--{flag} {wanted} lies in what --overwrite_output_dir would delete in {out}; copy it elsewhere "
                    "or use another --output_dir"
                )
        return
    if not (out / "args.json").is_file():
        raise OutputDirError(
            f"--output_dir {out} is not empty and holds no earlier run; pass --overwrite_output_dir to write there "
            "anyway (only what a run writes is replaced, other files are kept) or choose another --output_dir"
        )
    recorded = read_json(out / "args.json")
    for flag, absent in _SAME_RUN_FLAGS.items():
        before, now = recorded.get(flag, absent), getattr(args, flag)
        if before != now:
            raise OutputDirError(
                f"--output_dir {out} holds a run with --{flag} {before} (this one: {now}); pass "
                "--overwrite_output_dir to start over there or choose another --output_dir"
            )
    args.resume_from_checkpoint = "latest"
    announce(f"xtc_ds: continuing the run in {out} from its checkpoints (--overwrite_output_dir starts over)")


def prepare_output_dir(args: Any) -> Path:
    """Carry out :func:`check_output_dir`'s decision (rank 0), after the process group has started.

    Temporaries of killed earlier runs are removed on every start; ``--overwrite_output_dir`` removes only
    :data:`RUN_OUTPUTS`, like Hugging Face's flag of that name keeps what it did not write.
    """
    out = Path(args.output_dir)
    if is_rank_zero() and out.is_dir():
        remove_run_temporaries(out)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            for name in RUN_OUTPUTS:
                if os.path.lexists(out / name):
                    remove_path(out / name)
    if dist.is_initialized():
        dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    return out
