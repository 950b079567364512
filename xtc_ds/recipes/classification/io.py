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
    eval_results.json         teacher, best student and final-model metrics, steps and wall time

``--overwrite_output_dir`` removes exactly these names (:data:`RUN_OUTPUTS`); anything else a user keeps in the
folder stays. Every file and folder here is written atomically (:mod:`xtc_ds.files`).
"""

from __future__ import annotations

from pathlib import Path

from xtc_ds.files import remove_stale_temporaries

__all__ = ["RUN_OUTPUTS", "PHASES", "remove_run_temporaries"]

RUN_OUTPUTS = ("args.json", "run_log.jsonl", "teacher", "student", "final", "packed", "eval_results.json")
"""What a run writes at the top of its output directory, and all that ``--overwrite_output_dir`` removes."""
PHASES = ("teacher", "student")
_PHASE_ATOMIC = ("best", "eval_results.json")  # written atomically inside a phase folder


def remove_run_temporaries(out: Path) -> None:
    """:func:`remove_stale_temporaries` for every file and folder a run writes atomically under ``out``."""
    targets = [out / name for name in RUN_OUTPUTS]
    targets += [out / phase / name for phase in PHASES for name in _PHASE_ATOMIC]
    for target in targets:
        remove_stale_temporaries(target, legacy=True)
