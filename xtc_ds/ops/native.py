"""Load the fused ops once per process; on any failure warn once (with the build log) and use the reference.

``XTC_DISABLE_OPS=1`` forces the pure-PyTorch reference everywhere.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from xtc_ds._log import announce, log_rank_zero, warn_once
from xtc_ds.ops import builder

__all__ = ["load_cpu", "load_cuda", "disabled", "status"]

_BUILD_MINUTES = {"cpu": "1 minute", "cuda": "3 minutes"}
_loaded: dict[str, Optional[Any]] = {}
_errors: dict[str, str] = {}


def disabled() -> bool:
    return os.environ.get("XTC_DISABLE_OPS", "") not in ("", "0")


def _log_failure(name: str, error: BaseException) -> Path:
    path = builder.build_dir(name).parent / f"{name}.build.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return path


def _load(device: str, name: str, build: Any) -> Optional[Any]:
    if disabled():
        return None
    if device not in _loaded:
        fresh = not builder.is_built(name)
        if fresh:
            announce(
                f"xtc_ds: building the fused {device.upper()} ops {name} in {builder.build_dir(name)} (first use in "
                f"this environment, about {_BUILD_MINUTES[device]} on 2 CPU cores; later runs load it in seconds)"
            )
        started = time.time()
        try:
            _loaded[device] = build()
        except Exception as error:  # a missing compiler and a compile error end the same way
            log = _log_failure(name, error)
            _errors[device] = f"{type(error).__name__}: build log at {log}"
            warn_once(
                f"xtc_ds: the fused {device.upper()} ops could not be built ({log}); using the pure-PyTorch reference"
            )
            _loaded[device] = None
        else:
            if fresh:
                announce(f"xtc_ds: built {name} in {time.time() - started:.0f} s")
            log_rank_zero(logging.INFO, f"xtc_ds: using the fused {device.upper()} ops {name}")
    return _loaded[device]


def load_cpu() -> Optional[Any]:
    """The CPU extension module, or None (disabled, or the build failed: warned once)."""
    return _load("cpu", builder.cpu_extension_name(), builder.build_cpu)


def load_cuda() -> Optional[Any]:
    """The CUDA extension module, or None (disabled, no CUDA, or the build failed: warned once)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return _load("cuda", builder.cuda_extension_name(), builder.build_cuda)


def status() -> dict[str, str]:
    """What ``python -m xtc_ds.report`` prints: per device, built / failed / disabled / not loaded."""
    if disabled():
        return {"cpu": "disabled by XTC_DISABLE_OPS", "cuda": "disabled by XTC_DISABLE_OPS"}
    out = {}
    for device in ("cpu", "cuda"):
        if device not in _loaded:
            out[device] = "not loaded yet"
        else:
            out[device] = "built" if _loaded[device] is not None else f"failed ({_errors[device]})"
    return out
