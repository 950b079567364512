"""How the fused ops are built: JIT through ninja (``torch.utils.cpp_extension.load``) into the torch extensions cache.

The CPU build targets the best instruction set this machine has (:data:`CPU_FLAVOURS`, best first: AVX-512 with
VNNI, AVX-512, AVX2 with AVX-VNNI, AVX2, generic); ``XTC_CPU_ISA`` picks a lower one this CPU also runs (to
compare flavours, or to test the one a slower fleet will use). The instruction set and a hash of the sources and
flags are part of the extension name, so a cache shared between machines never loads a build made for another
CPU, and two checkouts with different sources never rebuild over each other (:mod:`xtc_ds.ops.cache` keeps one
cache per Python environment). Nothing is built at install time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

from xtc_ds.errors import ConfigError
from xtc_ds.ops.cache import clear_stale_lock

__all__ = [
    "CPU_FLAVOURS",
    "csrc_dir",
    "supported_isas",
    "cpu_isa",
    "cpu_extension_name",
    "is_built",
    "build_cpu",
    "build_cuda",
    "build_dir",
    "cuda_extension_name",
]

_CPU_SOURCES = ("cpu/quant_cpu.cpp", "cpu/packed_cpu.cpp", "cpu/binding.cpp")
_CUDA_SOURCES = ("cuda/binding.cpp", "cuda/quant_kernels.cu", "cuda/packed_kernels.cu")
_CPU_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_ISA_FLAGS = {
    "avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avxvnni": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}
_ISA_CPU_FLAGS = {
    "avx512vnni": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"},
    "avxvnni": {"avx_vnni", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
    "generic": set(),
}
"""The /proc/cpuinfo flags each flavour needs."""
CPU_FLAVOURS = tuple(_ISA_FLAGS)
"""The CPU kernel flavours, best first: the packed linear runs on AVX-512 VNNI, on AVX2 (with vpdpbusd where
AVX-VNNI is present, which the avx512 flavour without VNNI also uses), or as portable loops (generic)."""


def csrc_dir() -> Path:
    """``csrc/`` of a source checkout (or editable install), else the copy shipped inside the package."""
    for candidate in (Path(__file__).resolve().parents[2] / "csrc", Path(__file__).resolve().parents[1] / "_csrc"):
        if (candidate / "include" / "xtc_ops.h").exists():
            return candidate
    raise FileNotFoundError("xtc_ds C++ sources not found (expected csrc/ beside the package)")


def supported_isas() -> tuple[str, ...]:
    """The flavours of :data:`CPU_FLAVOURS` this CPU executes, best first (always ending with ``generic``)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ("generic",)
    return tuple(isa for isa in CPU_FLAVOURS if _ISA_CPU_FLAGS[isa] <= flags)


def cpu_isa() -> str:
    """The flavour the CPU kernels are compiled for here: ``XTC_CPU_ISA`` if set, else the best supported.

    Raises:
        ConfigError: ``XTC_CPU_ISA`` names a flavour that is unknown or that this CPU cannot execute.
    """
    supported = supported_isas()
    chosen = os.environ.get("XTC_CPU_ISA", "").strip().lower()
    if not chosen:
        return supported[0]
    if chosen not in supported:
        what = "this CPU cannot execute" if chosen in CPU_FLAVOURS else "unknown flavour"
        raise ConfigError(f"XTC_CPU_ISA={chosen!r}: {what}; this CPU runs {', '.join(supported)}")
    return chosen


def _source_hash(sources: tuple[str, ...], flags: list[str]) -> str:
    """8 hex digits of sha256 over the sources, the headers they include and the compiler flags."""
    src = csrc_dir()
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in (
        [src / name for name in sources] + sorted((src / "include").glob("*")) + sorted(src.glob("cuda/*.cuh"))
    ):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def _cpu_flags(isa: str) -> list[str]:
    # No -ffast-math: results must stay bit-exact. The last two of _CPU_FLAGS only drop errno/FP-exception
    # bookkeeping, which lets rint() vectorize.
    return [*_CPU_FLAGS, *_ISA_FLAGS[isa]]


def cpu_extension_name(isa: Optional[str] = None) -> str:
    """``xtc_ds_cpu_ops_<isa>_<source hash>``, for flavour ``isa`` (default: :func:`cpu_isa`)."""
    isa = isa or cpu_isa()
    return f"xtc_ds_cpu_ops_{isa}_{_source_hash(_CPU_SOURCES, _cpu_flags(isa))}"


def cuda_extension_name() -> str:
    """``xtc_ds_cuda_ops_<source hash>``."""
    return f"xtc_ds_cuda_ops_{_source_hash(_CUDA_SOURCES, ['-O3'])}"


def build_dir(name: str) -> Path:
    """Where ``torch.utils.cpp_extension`` builds extension ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def is_built(name: str) -> bool:
    """Whether the cache already holds a build of extension ``name`` (loading it then takes seconds)."""
    return any(build_dir(name).glob(f"{name}*.so"))


def _load(name: str, sources: tuple[str, ...], verbose: bool, **kwargs: Any) -> Any:
    from torch.utils.cpp_extension import load

    clear_stale_lock(build_dir(name))
    src = csrc_dir()
    return load(
        name=name,
        sources=[str(src / file) for file in sources],
        verbose=verbose or os.environ.get("XTC_OPS_VERBOSE") == "1",
        **kwargs,
    )


def build_cpu(verbose: bool = False, isa: Optional[str] = None) -> Any:
    """Build (or load from the cache) the CPU extension of flavour ``isa`` (default: :func:`cpu_isa`).

    Raises:
        ConfigError: ``isa`` is not a flavour this CPU executes.
        Exception: whatever the compiler or the loader raises on a failed build.
    """
    isa = isa or cpu_isa()
    if isa not in supported_isas():
        raise ConfigError(f"CPU flavour {isa!r}: this CPU runs {', '.join(supported_isas())}")
    return _load(
        cpu_extension_name(isa),
        _CPU_SOURCES,
        verbose,
        extra_include_paths=[str(csrc_dir() / "include")],
        extra_cflags=_cpu_flags(isa),
        extra_ldflags=["-fopenmp"],
    )


def build_cuda(verbose: bool = False) -> Any:
    """Build (or load from the cache) the CUDA extension for the visible GPUs; needs a CUDA build of torch."""
    src = csrc_dir()
    return _load(
        cuda_extension_name(),
        _CUDA_SOURCES,
        verbose,
        extra_include_paths=[str(src / "include"), str(src / "cuda")],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
    )
