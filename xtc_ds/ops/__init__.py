"""The quantization ops every module calls: argument checks, then the ``torch.ops.xtc_ds`` operator.

Which implementation runs is decided by dispatch (:mod:`xtc_ds.ops.library`): the fused CPU/CUDA kernel where the
extension loaded, the pure-PyTorch reference otherwise. :func:`use_kernels` / :func:`set_kernels` (or the
``XTC_KERNELS`` environment variable, ``XTC_DISABLE_OPS=1`` as an alias for ``reference``) choose between them.

Under ``torch.compile`` the two fake-quantization ops are traced as their reference (with the same
straight-through gradient) instead of called as opaque ops, so Inductor fuses them into the neighbouring
kernels: a compiled QAT step then costs what a compiled fp32 step costs (``benchmarks/bench_train_step.py``).
``torch.export`` keeps them as ``xtc_ds`` ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from xtc_ds.ops import library
from xtc_ds.ops.library import TILE_INPUTS, TILE_ROWS
from xtc_ds.ops.native import KERNEL_CHOICES, kernels, set_kernels, use_kernels
from xtc_ds.quant import packing, reference
from xtc_ds.quant.formats import storage_bits

__all__ = [
    "KERNEL_CHOICES",
    "kernels",
    "set_kernels",
    "use_kernels",
    "fake_quant_weight",
    "fake_quant_activation",
    "pack_bits",
    "unpack_bits",
    "prepack_weight",
    "packed_linear",
    "TILE_ROWS",
    "TILE_INPUTS",
]


class _StraightThrough(torch.autograd.Function):
    """The reference in the forward pass, the identity in the backward pass: what Dynamo traces and fuses."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        ctx.num_args = len(args)
        return fn(x, *args)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        return (grad, None) + (None,) * ctx.num_args


def _traced_by_compile() -> bool:
    return torch.compiler.is_dynamo_compiling() and not torch.compiler.is_exporting()


def fake_quant_weight(
    weight: torch.Tensor, bits: int, num_groups: int, symmetric: bool = True, stochastic: bool = False
) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_weight`, with a straight-through gradient."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    if num_groups < 1 or weight.numel() % num_groups:
        raise ValueError(
            f"cannot split a tensor of {weight.numel()} elements {tuple(weight.shape)} into {num_groups} equal groups"
        )
    if _traced_by_compile():
        return _StraightThrough.apply(weight, reference.fake_quant_weight, bits, num_groups, symmetric, stochastic)
    return library.fake_quant_weight(weight, bits, num_groups, symmetric, stochastic)


def fake_quant_activation(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    x_min: Optional[torch.Tensor] = None,
    x_max: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_activation`, with a straight-through gradient."""
    if not 2 <= bits <= 8:
        raise ValueError(f"activation bits must be 2..8, got {bits}")
    if (x_min is None) != (x_max is None):
        raise ValueError("a static activation range needs both x_min and x_max")
    if _traced_by_compile():
        return _StraightThrough.apply(x, reference.fake_quant_activation, bits, symmetric, x_min, x_max)
    return library.fake_quant_activation(x, bits, symmetric, x_min, x_max)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.packing.pack_bits`."""
    packing.check_pack_args(codes, bits, packing=True)
    return library.pack_bits(codes, bits)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Same contract as :func:`xtc_ds.quant.packing.unpack_bits`."""
    packing.check_pack_args(packed, bits, packing=False)
    return library.unpack_bits(packed, bits)


def prepack_weight(packed_weight: torch.Tensor, bits: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's kernel layout of symmetric packed rows and the int32 row sums of their levels.

    Args:
        packed_weight: uint8 ``(out_features, bytes)`` in the :func:`pack_bits` layout of ``storage_bits(bits)``.
        bits: 1 (binary), 2 (ternary) or 3..8 (symmetric codes ``level + 2^(bits-1)``).
        in_features: codes per row (the rest of the last byte is padding).
    Raises:
        ValueError: ``out_features`` is not a multiple of :data:`TILE_ROWS`, ``in_features`` not a multiple of
            :data:`TILE_INPUTS`, or the rows do not hold ``in_features`` codes.
    """
    if packed_weight.dtype != torch.uint8 or packed_weight.dim() != 2:
        raise TypeError(
            f"packed_weight must be a 2-D uint8 tensor, got {packed_weight.dtype} {tuple(packed_weight.shape)}"
        )
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    out_features, row_bytes = packed_weight.shape
    library.tile_shape(out_features, in_features, bits)
    if row_bytes != packing.padded_length(in_features, storage_bits(bits)) * storage_bits(bits) // 8:
        raise ValueError(f"prepack_weight: {row_bytes} bytes per row do not hold {in_features} codes of {bits} bits")
    return library.prepack_weight(packed_weight, bits, in_features)


def packed_linear(
    x: torch.Tensor,
    kernel_weight: torch.Tensor,
    row_sum: torch.Tensor,
    row_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
    act_bits: int,
) -> torch.Tensor:
    """``y = fake_quant_activation(x, act_bits) @ (row_scale * levels)^T + bias`` from :func:`prepack_weight`.

    Args:
        x: ``(..., in_features)``; quantized per token, symmetric.
        kernel_weight, row_sum: what :func:`prepack_weight` returned for this device.
        row_scale: float32 ``(out_features,)``, the scale of each output row.
        bias: ``(out_features,)`` or None.
        bits, act_bits: the weight's and the activations' bits.
    Returns:
        ``(..., out_features)`` in ``x``'s dtype.
    """
    if row_scale.dim() != 1 or row_sum.shape != row_scale.shape:
        raise ValueError(f"row_scale and row_sum must be (out_features,), got {tuple(row_scale.shape)}")
    if not 2 <= act_bits <= 8:
        raise ValueError(f"activation bits must be 2..8, got {act_bits}")
    return library.packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits)
