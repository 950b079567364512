"""Fused quantization ops with the pure-PyTorch reference as specification and fallback.

The kernel is chosen once per (device type, dtype): the CPU or CUDA extension for float32/float16/bfloat16
(and uint8 codes) when it built, the reference otherwise (and for stochastic rounding or static activation
ranges, which only the reference implements).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from xtc_ds.ops import native
from xtc_ds.quant import packing, reference

__all__ = ["fake_quant_weight", "fake_quant_activation", "pack_bits", "unpack_bits", "kernel_for"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_choice: dict[tuple[str, torch.dtype], Optional[Any]] = {}


def kernel_for(tensor: torch.Tensor) -> Optional[Any]:
    """The native module serving ``tensor``'s device and dtype, or None for the reference (decided once)."""
    key = (tensor.device.type, tensor.dtype)
    if key not in _choice:
        module = None
        if tensor.dtype in _FLOATS or tensor.dtype == torch.uint8:
            module = {"cpu": native.load_cpu, "cuda": native.load_cuda}.get(tensor.device.type, lambda: None)()
        _choice[key] = module
    return _choice[key]


def fake_quant_weight(
    weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True, stochastic: bool = False
) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_weight`."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    if num_groups < 1 or weight.numel() % num_groups:
        raise ValueError(
            f"cannot split a tensor of {weight.numel()} elements {tuple(weight.shape)} into {num_groups} equal groups"
        )
    kernel = kernel_for(weight)
    if kernel is None or stochastic:
        return reference.fake_quant_weight(weight, bits, num_groups, symmetric, stochastic)
    return kernel.fake_quant(weight, bits, num_groups, symmetric)


def fake_quant_activation(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_activation` (per token unless a range is given)."""
    kernel = kernel_for(x)
    if kernel is None or x_max is not None:
        return reference.fake_quant_activation(x, bits, symmetric, x_min, x_max)
    return kernel.fake_quant(x, bits, x.numel() // x.shape[-1], symmetric)


def _packer(name: str, fallback: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def op(t: torch.Tensor, bits: int) -> torch.Tensor:
        packing.check_pack_args(t, bits, packing=name == "pack_bits")
        kernel = kernel_for(t)
        return fallback(t, bits) if kernel is None else getattr(kernel, name)(t, bits)

    op.__name__ = name
    op.__doc__ = f"Same contract as :func:`xtc_ds.quant.packing.{name}`."
    return op


pack_bits = _packer("pack_bits", packing.pack_bits)
unpack_bits = _packer("unpack_bits", packing.unpack_bits)
