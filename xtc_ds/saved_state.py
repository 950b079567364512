"""The compression state saved beside a model's weights (the recipe's ``best/`` folders, Trainer checkpoints):
the schedule's step and static activation ranges, and the ``compression_training`` config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from xtc_ds.config import SECTION, CompressionConfig
from xtc_ds.errors import CheckpointError
from xtc_ds.files import temp_prefix, write_json_atomic
from xtc_ds.safe_load import load_weights
from xtc_ds.schedule import CompressionScheduler

__all__ = ["SCHEDULER_FILE", "COMPRESSION_FILE", "save_compression_state", "load_compression_state"]

SCHEDULER_FILE = "xtc_scheduler.pt"
"""The compression schedule's state (``CompressionScheduler.state_dict()``)."""
COMPRESSION_FILE = "xtc_compression.json"
"""The ``compression_training`` section the model was compressed with."""


def save_compression_state(
    folder: Union[str, Path], scheduler: CompressionScheduler, config: CompressionConfig
) -> None:
    """Write both files into ``folder``, each atomically."""
    folder = Path(folder)
    temporary = folder / f"{temp_prefix(folder / SCHEDULER_FILE)}{os.getpid()}"
    try:
        torch.save(scheduler.state_dict(), temporary)
        os.replace(temporary, folder / SCHEDULER_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    write_json_atomic(folder / COMPRESSION_FILE, {SECTION: config.to_dict()})


def load_compression_state(folder: Union[str, Path], scheduler: CompressionScheduler) -> None:
    """Restore ``scheduler`` from ``folder``'s schedule file (read with ``weights_only=True``).

    Raises:
        CheckpointError: naming the file when it is missing (a folder saved without xtc_ds) or unreadable.
    """
    path = Path(folder) / SCHEDULER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing, so the folder holds no compression schedule state (was it saved without xtc_ds, "
            "e.g. by a plain Trainer?); use a folder xtc_ds wrote"
        )
    scheduler.load_state_dict(load_weights(path))
