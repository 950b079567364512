"""How the fused ops are built: JIT through ninja (``torch.utils.cpp_extension.load``) into the torch extensions cache.

The CPU build targets the best instruction set this machine has (AVX-512, else AVX2, else generic); the
instruction set is part of the extension name, so a cache shared between machines never loads a build made
for another CPU. Nothing is built at install time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "csrc_dir",
    "cpu_isa",
    "cpu_extension_name",
    "build_cpu",
    "build_cuda",
    "build_dir",
    "CUDA_EXTENSION_NAME",
    "STALE_LOCK_SECONDS",
]

CUDA_EXTENSION_NAME = "xtc_ds_cuda_ops"

STALE_LOCK_SECONDS = 600
_ISA_FLAGS = {
    "avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}


def csrc_dir() -> Path:
    """``csrc/`` of a source checkout (or editable install), else the copy shipped inside the package."""
    for candidate in (Path(__file__).resolve().parents[2] / "csrc", Path(__file__).resolve().parents[1] / "_csrc"):
        if (candidate / "include" / "xtc_ops.h").exists():
            return candidate
    raise FileNotFoundError("xtc_ds C++ sources not found (expected csrc/ beside the package)")


def cpu_isa() -> str:
    """``avx512vnni``, ``avx512``, ``avx2`` or ``generic``: what the CPU kernels are compiled for here."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "generic"
    if {"avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"} <= flags:
        return "avx512vnni" if "avx512_vnni" in flags else "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "generic"


def cpu_extension_name() -> str:
    return f"xtc_ds_cpu_ops_{cpu_isa()}"


def build_dir(name: str) -> Path:
    """Where ``torch.utils.cpp_extension`` builds extension ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def _remove_stale_lock(name: str) -> None:
    # A build killed half-way leaves `lock` behind and every later load waits on it forever.
    lock = build_dir(name) / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
        lock.unlink(missing_ok=True)


def build_cpu(verbose: bool = False) -> Any:
    """Build (or load from the cache) the CPU extension; raises on a failed build."""
    from torch.utils.cpp_extension import load

    name = cpu_extension_name()
    _remove_stale_lock(name)
    src = csrc_dir()
    return load(
        name=name,
        sources=[str(src / "cpu" / file) for file in ("quant_cpu.cpp", "packed_cpu.cpp", "binding.cpp")],
        extra_include_paths=[str(src / "include")],
        # No -ffast-math: results must stay bit-exact. These two only drop errno/FP-exception bookkeeping,
        # which lets rint() vectorize.
        extra_cflags=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *_ISA_FLAGS[cpu_isa()]],
        extra_ldflags=["-fopenmp"],
        verbose=verbose or os.environ.get("XTC_OPS_VERBOSE") == "1",
    )


def build_cuda(verbose: bool = False) -> Any:
    """Build (or load from the cache) the CUDA extension for the visible GPUs; needs a CUDA build of torch."""
    from torch.utils.cpp_extension import load

    _remove_stale_lock(CUDA_EXTENSION_NAME)
    src = csrc_dir()
    return load(
        name=CUDA_EXTENSION_NAME,
        sources=[str(src / "cuda" / file) for file in ("binding.cpp", "quant_kernels.cu", "packed_kernels.cu")],
        extra_include_paths=[str(src / "include"), str(src / "cuda")],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=verbose or os.environ.get("XTC_OPS_VERBOSE") == "1",
    )
