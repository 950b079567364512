"""The JIT kernel cache: one folder per Python environment, and locks that a killed build left behind.

``torch.utils.cpp_extension`` keeps every JIT-built extension (xtc_ds's ops and DeepSpeed's) in one folder,
``~/.cache/torch_extensions/py311_cpu`` by default, shared by every virtual environment and checkout of the
same Python: they rebuild each other's ops back and forth, and one can load another's build. Unless the user
set ``TORCH_EXTENSIONS_DIR``, xtc_ds points it at a folder keyed by the interpreter prefix and the torch and
DeepSpeed versions and the host (set when ``xtc_ds`` is imported, so DeepSpeed's builds in the same process
land there too; per host, so that a home folder shared by cluster nodes gives each node's locks one owner).

A build holds ``<build dir>/lock`` while it runs; a build killed half-way leaves it, and torch waits for it to
vanish forever, without a word. :func:`clear_stale_lock` removes such a lock, with a warning, once no process
is building in that folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import socket
import sys
import time
from pathlib import Path

from xtc_ds._log import warn_once

__all__ = ["ENV_VAR", "environment_key", "default_extensions_dir", "configure_extensions_dir", "clear_stale_lock"]

ENV_VAR = "TORCH_EXTENSIONS_DIR"
LOCK_GRACE_SECONDS = 30.0
"""How long a lock with no build process in its folder may stand before it counts as left by a killed build
(a starting build takes the lock a moment before its compiler runs in the folder)."""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def environment_key() -> str:
    """``py311-torch2.13.0-ds0.19.8-<hash of interpreter prefix and host>``: what a JIT build depends on."""
    import torch

    deepspeed = _version("deepspeed")
    where = hashlib.sha256(f"{os.path.realpath(sys.prefix)}@{socket.gethostname()}".encode()).hexdigest()[:10]
    return f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-ds{deepspeed}-{where}"


def default_extensions_dir() -> Path:
    """``$XDG_CACHE_HOME/xtc_ds/torch_extensions/<environment key>`` (``~/.cache`` without XDG_CACHE_HOME)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "xtc_ds" / "torch_extensions" / environment_key()


def configure_extensions_dir() -> Path:
    """Set ``TORCH_EXTENSIONS_DIR`` to :func:`default_extensions_dir` unless the user set it; return the folder."""
    if not os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = str(default_extensions_dir())
    return Path(os.environ[ENV_VAR])


def _building_in(folder: Path) -> bool:
    """True if a live process works in ``folder`` (ninja and the compilers run there during a build)."""
    target = os.path.realpath(folder)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(entry / "cwd") == target:
                return True
        except OSError:
            continue
    return False


def clear_stale_lock(build_dir: Path, grace: float = LOCK_GRACE_SECONDS) -> bool:
    """Wait while a live build holds ``build_dir/lock``; remove the lock once it is older than ``grace`` seconds
    and no process builds there. Returns whether a stale lock was removed.
    """
    lock = build_dir / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if not _building_in(build_dir) and age > grace:
            lock.unlink(missing_ok=True)
            warn_once(
                f"xtc_ds: removed {lock}, left by a build that was killed (no process is building there); "
                "building again"
            )
            return True
        time.sleep(1.0)
