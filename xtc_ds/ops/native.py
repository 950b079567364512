"""The one switch between the fused kernels and the reference, and the registration of the kernels.

The choice is ``auto`` (fused kernels wherever the extension builds, the reference elsewhere), ``reference``
(the pure-PyTorch reference everywhere) or ``native`` (fused kernels required: a failed build is an error). It
starts from the environment (``XTC_KERNELS``; ``XTC_DISABLE_OPS=1`` is an alias for ``reference``) and is changed
with :func:`set_kernels` or, for a block, :func:`use_kernels`.

The extension for a device is built (JIT, cached) and loaded the first time an op runs there; on success its
kernels are registered with ``torch.library`` for that device, on failure a warning names the build log once and
the reference stays in use. A registered kernel still serves the reference where the extension has no kernel
(stochastic rounding, static activation ranges, float64, non-float32 packed inputs) or the choice is
``reference``.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch

from xtc_ds._log import announce, log_rank_zero, warn_once
from xtc_ds.errors import ConfigError, XtcError
from xtc_ds.ops import builder, library
from xtc_ds.quant import packing, reference

__all__ = [
    "KERNEL_CHOICES",
    "kernels",
    "set_kernels",
    "use_kernels",
    "register_for",
    "registered_devices",
    "load_cpu",
    "load_cuda",
    "use_cpu_flavour",
    "status",
]

KERNEL_CHOICES = ("auto", "reference", "native")
_BUILD_MINUTES = {"cpu": "1 minute", "cuda": "3 minutes"}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_loaded: dict[str, Optional[Any]] = {}
_errors: dict[str, str] = {}
_registered: set[str] = set()
_active: dict[str, Any] = {}  # per device, the extension its registered kernels call (use_cpu_flavour swaps cpu's)
_flavours: dict[str, Any] = {}  # CPU extensions by flavour, loaded by use_cpu_flavour


def _choice_from_environment() -> str:
    value = os.environ.get("XTC_KERNELS", "").strip().lower()
    if value:
        if value not in KERNEL_CHOICES:
            raise ConfigError(f"XTC_KERNELS={value!r}: expected one of {', '.join(KERNEL_CHOICES)}")
        return value
    return "reference" if os.environ.get("XTC_DISABLE_OPS", "") not in ("", "0") else "auto"


_choice = _choice_from_environment()


def kernels() -> str:
    """The current choice: ``auto``, ``reference`` or ``native``."""
    return _choice


def set_kernels(choice: str) -> str:
    """Choose the kernels for every later op call in this process; returns the previous choice.

    Raises:
        ConfigError: ``choice`` is not one of :data:`KERNEL_CHOICES`.
    """
    global _choice
    if choice not in KERNEL_CHOICES:
        raise ConfigError(f"kernels: expected one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    previous, _choice = _choice, choice
    return previous


@contextmanager
def use_kernels(choice: str) -> Iterator[None]:
    """``with use_kernels("reference"):`` runs a block on the reference (or ``native``/``auto``) kernels."""
    previous = set_kernels(choice)
    try:
        yield
    finally:
        set_kernels(previous)


def _log_failure(name: str, error: BaseException) -> Path:
    path = builder.build_dir(name).parent / f"{name}.build.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return path


def _load(device: str, name: str, build: Any) -> Optional[Any]:
    if _choice == "reference":
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
    if not torch.cuda.is_available():
        return None
    return _load("cuda", builder.cuda_extension_name(), builder.build_cuda)


def _reference_chosen() -> bool:
    return _choice == "reference"


def _kernels_of(device: str) -> dict[str, Callable[..., Any]]:
    """Kernels for the ops of ``library`` calling ``_active[device]``, each serving the reference where the
    extension has none."""

    def fake_quant_weight(weight, bits, num_groups, symmetric, stochastic):
        if _reference_chosen() or stochastic or weight.dtype not in _FLOATS:
            return reference.fake_quant_weight(weight, bits, num_groups, symmetric, stochastic).contiguous()
        return _active[device].fake_quant(weight, bits, num_groups, symmetric)

    def fake_quant_activation(x, bits, symmetric, x_min, x_max):
        if _reference_chosen() or x_max is not None or x.dtype not in _FLOATS or x.numel() == 0:
            return reference.fake_quant_activation(x, bits, symmetric, x_min, x_max).contiguous()
        return _active[device].fake_quant(x, bits, x.numel() // x.shape[-1], symmetric)

    def pack_bits(codes, bits):
        return packing.pack_bits(codes, bits) if _reference_chosen() else _active[device].pack_bits(codes, bits)

    def unpack_bits(packed, bits):
        return packing.unpack_bits(packed, bits) if _reference_chosen() else _active[device].unpack_bits(packed, bits)

    def prepack_weight(packed_weight, bits, in_features):
        if _reference_chosen():
            return library.reference_prepack_weight(packed_weight, bits, in_features)
        return tuple(_active[device].prepack_weight(packed_weight, bits, in_features))

    def packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits):
        native_layout = kernel_weight.dim() == (2 if x.device.type == "cuda" else 3)
        floats = x.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
        if _reference_chosen() or not (native_layout and floats):
            return library.reference_packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits)
        return _active[device].packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits)

    return {
        "fake_quant_weight": fake_quant_weight,
        "fake_quant_activation": fake_quant_activation,
        "pack_bits": pack_bits,
        "unpack_bits": unpack_bits,
        "prepack_weight": prepack_weight,
        "packed_linear": packed_linear,
    }


def register_for(device: str) -> bool:
    """Load the extension for ``device`` and register its kernels; True only on the call that registered them.

    Raises:
        XtcError: the choice is ``native`` and the extension for ``device`` cannot be loaded.
    """
    if _choice == "reference" or device in _registered or device not in ("cpu", "cuda"):
        return False
    module = load_cpu() if device == "cpu" else load_cuda()
    if module is None:
        if _choice == "native":
            raise XtcError(
                f"xtc_ds: kernels 'native' chosen but the fused {device.upper()} ops are unavailable "
                f"({status()[device]})"
            )
        return False
    _active[device] = module
    for name, kernel in _kernels_of(device).items():
        library.OPS[name].register_kernel(device, kernel)
    _registered.add(device)
    return True


@contextmanager
def use_cpu_flavour(isa: str) -> Iterator[Any]:
    """Run a block's CPU ops on the extension built for flavour ``isa`` (:data:`builder.CPU_FLAVOURS`) instead of
    this machine's best one, to compare flavours side by side in one process; yields that extension module.

    Every flavour writes the same kernel layout, so weights prepacked by one run on any other.

    Raises:
        XtcError: the kernels in use are the reference, or this machine's own CPU ops did not load.
        ConfigError: this CPU cannot execute ``isa``.
    """
    if _choice == "reference" or (not register_for("cpu") and "cpu" not in _registered):
        raise XtcError(f"xtc_ds: no fused CPU ops in use (kernels: {_choice}; cpu: {status()['cpu']})")
    if isa not in _flavours:
        _flavours[isa] = builder.build_cpu(isa=isa)
    previous, _active["cpu"] = _active["cpu"], _flavours[isa]
    try:
        yield _active["cpu"]
    finally:
        _active["cpu"] = previous


def status() -> dict[str, str]:
    """What ``python -m xtc_ds.report`` prints: per device, built / failed / disabled / not loaded."""
    if _choice == "reference":
        return {"cpu": "not used (kernels: reference)", "cuda": "not used (kernels: reference)"}
    out = {}
    for device in ("cpu", "cuda"):
        if device not in _loaded:
            out[device] = "not loaded yet"
        else:
            out[device] = "built" if _loaded[device] is not None else f"failed ({_errors[device]})"
    return out


def registered_devices() -> frozenset[str]:
    """Devices whose fused kernels are registered with the ops in this process."""
    return frozenset(_registered)


library.set_kernel_loader(register_for)
