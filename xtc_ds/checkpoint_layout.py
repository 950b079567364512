"""Resuming a checkpoint under another ZeRO stage or process count.

DeepSpeed's own loader takes a checkpoint only where the optimizer state is laid out the same way: one full
state (no ZeRO) at any world size, stage 1 and 2 partitions into each other at the same world size. Beyond
that, its *universal checkpoint* (``deepspeed.checkpoint.ds_to_universal``: one fp32 file per parameter and
optimizer moment) reshards stages 1 and 2 into each other, and stage 3 into stage 3, at any world size. Each
tag folder records the layout that wrote it in ``xtc_layout.json``; a resume reads it, converts once where
needed, and refuses the rest before any engine state is touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from xtc_ds._log import logger
from xtc_ds.distributed import rank_zero_decides
from xtc_ds.errors import CheckpointError
from xtc_ds.files import remove_stale_temporaries, temp_prefix

__all__ = [
    "LAYOUT_FILE",
    "UNIVERSAL_DIR",
    "CheckpointLayoutError",
    "read_layout",
    "prepare_resume",
    "resume_route",
]

LAYOUT_FILE = "xtc_layout.json"  # in each tag folder: the ZeRO stage, world size and phase that wrote it
UNIVERSAL_DIR = "universal"  # under checkpoints/: converted copies, one folder per tag


class CheckpointLayoutError(CheckpointError):
    """A checkpoint that DeepSpeed cannot load under this run's ZeRO stage or world size."""


def read_layout(tag_dir: Path) -> dict[str, Any]:
    """``{"zero_stage", "world_size"[, "phase"]}`` of a tag written by xtc_ds.

    Raises:
        CheckpointError: naming the file when it is not such a record.
    """
    path = tag_dir / LAYOUT_FILE
    try:
        layout = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    valid = (
        isinstance(layout, dict)
        and all(type(layout.get(key)) is int and layout[key] >= 0 for key in ("zero_stage", "world_size"))
        and layout.get("phase", "") in ("", "teacher", "student")
    )
    if not valid:
        raise CheckpointError(f"{path}: not a checkpoint layout record (zero_stage, world_size, phase)")
    return layout


def resume_route(saved_stage: int, saved_world: int, partitioned: bool, zero_stage: int, world_size: int) -> str:
    """``"native"`` where DeepSpeed loads the checkpoint as it is, ``"universal"`` where it must be converted.

    Args:
        saved_stage, saved_world: the layout that wrote the checkpoint.
        partitioned: whether its optimizer state is split into per-rank files (ZeRO, or DeepSpeed's bf16
            optimizer at stage 0).
        zero_stage, world_size: this run's layout.
    Raises:
        CheckpointLayoutError: where neither can load it (into or out of ZeRO, across stage 3's boundary).
    """
    if not partitioned and zero_stage == 0:
        return "native"
    if partitioned and (saved_stage, saved_world) == (zero_stage, world_size):
        return "native"
    if partitioned and {saved_stage, zero_stage} <= {1, 2}:
        return "native" if saved_world == world_size else "universal"
    if partitioned and saved_stage == zero_stage == 3:
        return "universal"
    raise CheckpointLayoutError(
        f"it was written with ZeRO stage {saved_stage} on {saved_world} process(es) and this run uses stage "
        f"{zero_stage} on {world_size}; DeepSpeed cannot carry the optimizer state across that change (it "
        "reshards stages 1 and 2 into each other, and 3 into 3, at any process count). Resume with a layout "
        "it can load, or start a new run from the weights (python -m xtc_ds.export --checkpoint ..., or "
        "DeepSpeed's zero_to_fp32.py)"
    )


def _convert(tag_dir: Path) -> Path:
    """Rank 0's work: the universal copy of ``tag_dir``, built once in a scratch folder and renamed in."""
    target = tag_dir.parent / UNIVERSAL_DIR / tag_dir.name
    remove_stale_temporaries(target)
    if target.exists():  # complete: only ever renamed in whole
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--inject_missing_state"]
        cmd += ["--input_folder", str(tag_dir), "--output_folder", str(scratch / tag_dir.name)]
        logger.info("xtc_ds: converting %s to a universal checkpoint in %s", tag_dir, target)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CheckpointLayoutError(
                f"DeepSpeed's ds_to_universal could not convert {tag_dir}:\n{result.stderr[-2000:]}"
            )
        scratch.joinpath(tag_dir.name).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def prepare_resume(tag_dir: Path, zero_stage: int, world_size: int) -> tuple[Path, bool]:
    """The tag folder to load to resume ``tag_dir`` under this layout, and whether it is a universal checkpoint.

    Collective: every rank calls it; rank 0 converts (once per tag; ranks on other nodes need the same
    shared checkpoint folder, as DeepSpeed's resharding does) and tells the others how it went.
    """
    if not (tag_dir / LAYOUT_FILE).exists():
        return tag_dir, False  # not written by xtc_ds: DeepSpeed's loader decides
    saved = read_layout(tag_dir)
    partitioned = any(tag_dir.glob("*optim_states.pt"))
    try:
        route = resume_route(saved["zero_stage"], saved["world_size"], partitioned, zero_stage, world_size)
    except CheckpointLayoutError as err:
        raise CheckpointLayoutError(f"--resume_from_checkpoint {tag_dir}: {err}") from None
    if route == "native":
        return tag_dir, False
    return rank_zero_decides(lambda: _convert(tag_dir)), True
