"""Atomic files and folders: a crash leaves the previous file or folder, never half of one.

Every temporary is a hidden sibling of its target named with :data:`TEMP_MARK` and the writer's pid, so a later
start removes those a killed writer left, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xtc_ds.errors import CheckpointError, ModelError, OutputDirError

__all__ = [
    "TEMP_MARK",
    "path_within",
    "require_model_folder",
    "remove_path",
    "write_json_atomic",
    "write_text_atomic",
    "read_json",
    "replace_dir_atomic",
    "remove_stale_temporaries",
    "temp_prefix",
    "append_jsonl",
    "read_jsonl",
]

TEMP_MARK = ".xtc-tmp-"
"""Temporaries are named ``.<target><TEMP_MARK><pid>-<random>`` beside their target: unique, hidden, and
recognisable as xtc_ds's own, so a later start can remove those a killed process left and nothing else."""

_LEGACY_TEMP = re.compile(r"\.(?P<target>.+)\.(?:[a-z0-9_]{8}|old)")  # names xtc_ds 0.1 used for the same job


def temp_prefix(path: Path) -> str:
    """The name prefix of a temporary that stands in for ``path`` (pass to ``tempfile.mkstemp``/``mkdtemp``)."""
    return f".{path.name}{TEMP_MARK}{os.getpid()}-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temporary of this process is never in use once a new write of the same target starts
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def path_within(path: Path, folder: Path) -> bool:
    """True if ``path`` is ``folder`` or lies inside it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def require_model_folder(path: Path) -> None:
    """Raise :class:`ModelError` unless ``path`` is a folder with a Hugging Face ``config.json``."""
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path}: no config.json (expected a Hugging Face model folder)")


def remove_path(path: Path) -> None:
    """Delete a file, a link or a folder tree (for paths xtc_ds wrote itself)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path, legacy: bool = False) -> None:
    """Remove the temporaries that killed writers of ``path`` left beside it, finishing a half-done swap.

    A writer killed between moving the old folder aside and moving the new one in leaves ``path`` missing and
    the old folder in its temporary: it is moved back first. Temporaries of a process that still runs are left.

    Args:
        path: the file or folder that was being written.
        legacy: also remove the ``.<name>.XXXXXXXX`` and ``.<name>.old`` siblings xtc_ds 0.1 left; only for
            targets whose parent folder xtc_ds owns (a run's output directory).
    """
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}{TEMP_MARK}"
    for sibling in path.parent.iterdir():
        name = sibling.name
        if name.startswith(prefix):
            pid = name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and _process_alive(int(pid)):
                continue
            old = sibling / "old"
            if sibling.is_dir() and old.exists() and not os.path.lexists(path):
                os.replace(old, path)
            remove_path(sibling)
        elif legacy and (match := _LEGACY_TEMP.fullmatch(name)) and match["target"] == path.name:
            remove_path(sibling)


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the permissions of an ordinary new file (``0666`` less the umask), not the temporary's ``0600``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(folder)`` beside ``path``, then swap it in for ``path``.

    Everything happens inside one uniquely named hidden sibling (``.<name>.xtc-tmp-<pid>-<random>``): the new
    folder is built there, the old ``path`` is moved into it, the new one is moved out to ``path``, and the
    sibling is removed, on failure too. ``path`` always names a complete folder (or, for a moment between the
    two renames, none; a later write or :func:`remove_stale_temporaries` puts the old one back). Whether
    ``path`` may be replaced at all is the caller's decision.
    """
    remove_stale_temporaries(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputDirError(f"{path}: exists and is not a folder; xtc_ds will not replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    new, old = scratch / "new", scratch / "old"
    try:
        new.mkdir(mode=0o777)  # an ordinary folder under the user's umask (mkdtemp's own is private)
        fill(new)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
    except BaseException:
        if old.exists() and not os.path.lexists(path):
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_json(path: Path) -> Any:
    """A JSON file xtc_ds wrote earlier (results, best-checkpoint records).

    Raises:
        CheckpointError: naming the file when it is unreadable or not JSON.
    """
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err}); delete it or rerun with --overwrite_output_dir") from None


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
