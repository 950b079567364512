"""Which checkpoint a resume loads, and whether it is whole, decided before DeepSpeed reads a byte of it.

Each tag folder (``global_stepN``) gets ``xtc_manifest.json`` last, after DeepSpeed and xtc_ds have written
everything else: the size and sha256 of every file in it. A tag is *complete* when its manifest is there and
every file still matches; a kill while saving, a truncated copy or an edited file is found here and named, not
by an ``EOFError`` deep inside ``torch.load``. ``--resume_from_checkpoint latest`` takes the newest complete
tag and warns about each newer one it passes over; it never starts a phase over while checkpoints exist.
Every ``.pt`` file also passes :func:`xtc_ds.safe_load.check_pickle` before DeepSpeed unpickles it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Optional

from xtc_ds._log import log_rank_zero
from xtc_ds.checkpoint_layout import LAYOUT_FILE, read_layout
from xtc_ds.errors import CheckpointError
from xtc_ds.files import write_json_atomic
from xtc_ds.safe_load import check_pickle

__all__ = [
    "MANIFEST_FILE",
    "checkpoint_tag_dir",
    "list_tags",
    "write_manifest",
    "verify_tag",
    "select_tag",
    "resolve_source",
]

MANIFEST_FILE = "xtc_manifest.json"
_TAG = re.compile(r"global_step(\d+)")
_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_latest(latest: Path) -> str:
    """The tag name a DeepSpeed ``latest`` file holds."""
    try:
        name = latest.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{latest}: unreadable ({err})") from None
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"{latest}: {name[:80]!r} is not a checkpoint tag name")
    return name


def checkpoint_tag_dir(source: Path) -> Path:
    """The tag folder ``source`` names: itself, or the one its ``latest`` file points to."""
    latest = source / "latest"
    return source / _read_latest(latest) if latest.is_file() else source


def list_tags(save_dir: Path) -> list[Path]:
    """The ``global_stepN`` folders of a save directory, newest (highest N) first."""
    if not save_dir.is_dir():
        return []
    tags = [(int(m[1]), p) for p in save_dir.iterdir() if p.is_dir() and (m := _TAG.fullmatch(p.name))]
    return [path for _, path in sorted(tags, reverse=True)]


def write_manifest(tag_dir: Path) -> None:
    """Record size and sha256 of every file in a saved tag; written last, so its presence marks a whole tag."""
    files = {
        str(path.relative_to(tag_dir)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(tag_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    write_json_atomic(tag_dir / MANIFEST_FILE, {"files": files})


def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    try:
        files = json.loads(path.read_bytes()).get("files")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a valid manifest ({err})") from None
    valid = isinstance(files, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    )
    if not valid or any(Path(name).is_absolute() or ".." in Path(name).parts for name in files):
        raise CheckpointError(f"{path}: not a valid manifest (expected files: {{name: {{size, sha256}}}})")
    return files


def verify_tag(tag_dir: Path, require_manifest: bool = True) -> None:
    """Check that a tag folder is whole and safe to hand to DeepSpeed.

    Args:
        tag_dir: a ``global_stepN`` (or other tag) folder.
        require_manifest: refuse a tag without ``xtc_manifest.json`` unless an older xtc_ds wrote it (it has
            ``xtc_layout.json``); a user's explicitly named DeepSpeed checkpoint is taken without one.
    Raises:
        CheckpointError: naming the missing, truncated, altered or unsafe file.
    """
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: missing")
    manifest = tag_dir / MANIFEST_FILE
    if manifest.exists():
        for name, entry in _manifest_files(manifest).items():
            path = tag_dir / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing (listed in {manifest})")
            size = path.stat().st_size
            if size != entry["size"]:
                raise CheckpointError(f"{path}: {size} bytes, {entry['size']} when saved (truncated or altered)")
            if _sha256(path) != entry["sha256"]:
                raise CheckpointError(f"{path}: its content changed since it was saved (sha256 differs)")
    elif require_manifest and not (tag_dir / LAYOUT_FILE).exists():
        raise CheckpointError(f"{tag_dir}: incomplete (no {MANIFEST_FILE}: the job ended while saving it)")
    else:
        log_rank_zero(logging.WARNING, f"xtc_ds: {tag_dir} has no {MANIFEST_FILE}; its files cannot be verified")
    if (tag_dir / LAYOUT_FILE).exists():
        read_layout(tag_dir)
    states = sorted(tag_dir.glob("*.pt"))
    if not any(path.name.endswith("model_states.pt") for path in states):
        raise CheckpointError(f"{tag_dir}: no *model_states.pt (not a DeepSpeed checkpoint)")
    for path in states:
        check_pickle(path)


def select_tag(save_dir: Path) -> Optional[Path]:
    """The newest complete tag of a save directory, or None where nothing was ever saved.

    Tags that fail :func:`verify_tag` are passed over with a warning naming the reason, and so is a ``latest``
    file that names no usable tag; the previous complete tag is taken (the pipeline keeps the last two).

    Raises:
        CheckpointError: checkpoints exist but none is complete (listing why each was refused).
    """
    problems = []
    candidates = list_tags(save_dir)
    latest = save_dir / "latest"
    if latest.is_file():
        try:
            named = save_dir / _read_latest(latest)
            if not named.is_dir():
                problems.append(f"{latest} names {named.name}, which does not exist")
            elif named not in candidates:
                candidates.insert(0, named)
        except CheckpointError as err:
            problems.append(str(err))
    for tag in candidates:
        try:
            verify_tag(tag)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            log_rank_zero(
                logging.WARNING, f"xtc_ds: resuming from {tag}, the newest complete checkpoint: {'; '.join(problems)}"
            )
        return tag
    if problems:
        raise CheckpointError(f"no complete checkpoint in {save_dir}: {'; '.join(problems)}")
    return None


def resolve_source(source: Path) -> Path:
    """The verified tag folder an explicit ``--resume_from_checkpoint DIR`` names.

    ``DIR`` is a save directory (with ``latest`` or ``global_stepN`` folders; its newest complete tag) or one
    tag folder.
    """
    if not source.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {source}: no such directory")
    if (source / "latest").exists() or list_tags(source):
        tag = select_tag(source)
        if tag is None:
            raise CheckpointError(f"--resume_from_checkpoint {source}: no checkpoint in it")
        return tag
    verify_tag(source, require_manifest=False)
    return source
