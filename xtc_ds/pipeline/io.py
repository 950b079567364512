"""Output-directory layout and atomic writes: a crash leaves the previous file or folder, never half of one.

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
    eval_results.json         teacher, best student and final-model metrics, steps and wall time
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "replace_dir_atomic", "append_jsonl", "read_jsonl"]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(tmp_dir)`` beside ``path``, then swap it in for ``path``.

    The old folder is renamed aside before the new one is renamed in, and deleted only after, so ``path``
    always names a complete folder (or, for a moment between the renames, none at all).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (the log survives SIGKILL up to the last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines log (a torn last line from a kill is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
