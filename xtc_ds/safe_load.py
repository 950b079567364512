"""Reading torch pickles (``.pt`` files) that a user hands over, without ever running code from them.

``torch.load(weights_only=False)`` executes whatever a pickle asks for, so a crafted checkpoint runs code.
xtc_ds reads such files only with ``weights_only=True``. DeepSpeed's own readers (``engine.load_checkpoint``
on resume, ``zero_to_fp32`` for ZeRO checkpoints) still unpickle fully; before a file reaches them,
:func:`check_pickle` reads its pickle opcodes (nothing is executed) and refuses it unless every global it names
is one ``weights_only`` loading allows anyway or one of the few DeepSpeed data classes its checkpoints hold.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Union

import torch

from xtc_ds.errors import CheckpointError

__all__ = ["DEEPSPEED_GLOBALS", "check_pickle", "load_weights"]

DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""Plain data classes (an enum, a dataclass, two loss-scaler records) in DeepSpeed's optimizer-state files."""


def _deepspeed_classes() -> list[type]:
    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: its files do not name it either
    return classes


def check_pickle(path: Union[str, Path]) -> None:
    """Refuse a ``.pt`` file whose pickle names a global that could run code; nothing in it is executed.

    Raises:
        CheckpointError: naming the file, for a file that is not a readable torch zip archive (truncated,
            garbage) or whose pickle names globals outside torch's weights-only set and :data:`DEEPSPEED_GLOBALS`.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises RuntimeError, ValueError or pickle errors for damaged archives
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    refused = sorted(set(unsafe) - set(DEEPSPEED_GLOBALS))
    if refused:
        raise CheckpointError(
            f"{path}: refused, its pickle calls {', '.join(refused)}, which could run code (xtc_ds loads only "
            "tensors, plain containers and DeepSpeed's checkpoint records)"
        )


def load_weights(path: Union[str, Path]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with DeepSpeed's checkpoint records allowed.

    Raises:
        CheckpointError: naming the file, when it is unreadable or holds anything else.
    """
    check_pickle(path)
    try:
        with torch.serialization.safe_globals(_deepspeed_classes()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
