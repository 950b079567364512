"""The errors xtc_ds raises for what a user handed it: a config, a file, a folder, a flag.

Each one's message names the offending key, file or flag, so a command line can print it as one line and exit 2
(``launch/train.py``, ``python -m xtc_ds.export`` do) instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "XtcError",
    "ConfigError",
    "PackedFormatError",
    "CheckpointError",
    "OutputDirError",
    "DataError",
    "ModelError",
    "TrainingError",
    "OnnxExportError",
    "exit_on_user_error",
]


class XtcError(ValueError):
    """Base of every user-facing error; the message names what to fix."""


class ConfigError(XtcError):
    """A ``compression_training`` config (or its use with a model) is invalid; the message names the key path."""


class PackedFormatError(XtcError):
    """An exported folder that is missing, truncated, corrupt or inconsistent; the message names the file or tensor."""


class CheckpointError(XtcError):
    """A training checkpoint that is missing, incomplete, corrupt or unsafe to load; the message names the file."""


class OutputDirError(XtcError):
    """An output folder xtc_ds refuses to write, because it would replace or delete files it did not write."""


class DataError(XtcError):
    """Missing or malformed training data; the message names the file and line, or says where data was looked for."""


class ModelError(XtcError):
    """A model folder that is missing, incomplete or unreadable; the message names the folder."""


class TrainingError(XtcError):
    """A training phase that ended without a usable result (no finite dev score, so no best checkpoint)."""


class OnnxExportError(XtcError):
    """A module the ONNX export cannot express exactly (or a missing ``[onnx]`` extra); the message names it."""


def exit_on_user_error(main: Callable[[], Any]) -> Any:
    """Run a command's ``main``; an :class:`XtcError` ends it with ``error: <message>`` on stderr and exit code 2."""
    try:
        return main()
    except XtcError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
