"""The xtc_ds operators, declared once with ``torch.library``: schema, shape function and gradient.

Every op's default implementation (any device, any dtype) is the pure-PyTorch reference in ``xtc_ds/quant/``.
:mod:`xtc_ds.ops.native` registers the fused CPU or CUDA kernels for their devices once the extension has loaded,
so a device or dtype without a kernel falls back to the reference by dispatch alone. The fake (shape) functions
let ``torch.compile`` and ``torch.export`` trace through the ops without running them; the fake-quantization ops
carry the straight-through gradient (identity to the quantized input; ranges and scales get none).

Kernel layout of packed weights (what :func:`prepack_weight` returns and :func:`packed_linear` reads). On CUDA:
the ``pack_bits`` rows unchanged. Elsewhere (the CPU kernel's layout, the one the reference also reads and
writes): uint8 ``(out_features / TILE_ROWS, in_features / TILE_INPUTS, block_bytes(bits))``; block ``(t, q)``
covers rows ``16t .. 16t+15`` and inputs ``4q .. 4q+3``, element ``(r, j)`` at position ``4r + j`` of the block
(the AVX512-VNNI operand order), in the weight format's ``kernel_layout`` (:mod:`xtc_ds.quant.formats`):

- ``sign_bits`` (binary): 8 bytes, a little-endian 64-bit mask whose bit ``4r + j`` is set for level +1;
- ``ternary_masks`` (ternary): 16 bytes, the mask of nonzero levels, then the mask of negative levels;
- ``int8`` (symmetric 3..8 bits): 64 bytes, the int8 levels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import custom_op

from xtc_ds.quant import packing, reference
from xtc_ds.quant.formats import weight_format

__all__ = [
    "TILE_ROWS",
    "TILE_INPUTS",
    "block_bytes",
    "tile_shape",
    "levels_of_codes",
    "fake_quant_weight",
    "fake_quant_activation",
    "pack_bits",
    "unpack_bits",
    "prepack_weight",
    "packed_linear",
    "reference_prepack_weight",
    "reference_packed_linear",
    "OPS",
]

TILE_ROWS = 16
TILE_INPUTS = 4


_kernel_loader: Optional[Callable[[str], bool]] = None


def set_kernel_loader(loader: Callable[[str], bool]) -> None:
    """Install what loads a device's fused kernels on its first call (:func:`xtc_ds.ops.native.register_for`, set
    when :mod:`xtc_ds.ops.native` is imported), so the ops declared here need not import the code that
    implements them."""
    global _kernel_loader
    _kernel_loader = loader


def _redispatch(device: torch.device) -> bool:
    """True when this call should go through the dispatcher again: native kernels were registered just now.

    The first call on a device lands here (no kernel is registered yet) and loads the extension lazily, so
    importing xtc_ds never builds anything.
    """
    return _kernel_loader is not None and _kernel_loader(device.type)


def _kernel_layout(bits: int) -> str:
    layout = weight_format(bits).kernel_layout
    if layout is None:
        raise ValueError(f"{bits}-bit weights have no kernel layout")
    return layout


def block_bytes(bits: int) -> int:
    """Bytes of one ``TILE_ROWS x TILE_INPUTS`` block of the CPU kernel layout."""
    return _LAYOUTS[_kernel_layout(bits)].block_bytes


def levels_of_codes(codes: Tensor, bits: int) -> Tensor:
    """Signed integer levels (int32) of symmetric weight codes (:meth:`WeightFormat.levels`)."""
    return weight_format(bits).levels(codes)


def _straight_through(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
    return (grad,) + (None,) * ctx.num_inputs


def _remember_inputs(num_inputs: int) -> Callable[..., None]:
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.num_inputs = num_inputs

    return setup_context


@custom_op("xtc_ds::fake_quant_weight", mutates_args=())
def fake_quant_weight(weight: Tensor, bits: int, num_groups: int, symmetric: bool, stochastic: bool) -> Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_weight` (contiguous output)."""
    if _redispatch(weight.device):
        return fake_quant_weight(weight, bits, num_groups, symmetric, stochastic)
    return reference.fake_quant_weight(weight, bits, num_groups, symmetric, stochastic).contiguous()


@fake_quant_weight.register_fake
def _(weight: Tensor, bits: int, num_groups: int, symmetric: bool, stochastic: bool) -> Tensor:
    return weight.new_empty(weight.shape)


fake_quant_weight.register_autograd(_straight_through, setup_context=_remember_inputs(4))


@custom_op("xtc_ds::fake_quant_activation", mutates_args=())
def fake_quant_activation(
    x: Tensor, bits: int, symmetric: bool, x_min: Optional[Tensor], x_max: Optional[Tensor]
) -> Tensor:
    """Same contract as :func:`xtc_ds.quant.reference.fake_quant_activation` (contiguous output)."""
    if _redispatch(x.device):
        return fake_quant_activation(x, bits, symmetric, x_min, x_max)
    return reference.fake_quant_activation(x, bits, symmetric, x_min, x_max).contiguous()


@fake_quant_activation.register_fake
def _(x: Tensor, bits: int, symmetric: bool, x_min: Optional[Tensor], x_max: Optional[Tensor]) -> Tensor:
    return x.new_empty(x.shape)


fake_quant_activation.register_autograd(_straight_through, setup_context=_remember_inputs(4))


@custom_op("xtc_ds::pack_bits", mutates_args=())
def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Same contract as :func:`xtc_ds.quant.packing.pack_bits`."""
    if _redispatch(codes.device):
        return pack_bits(codes, bits)
    return packing.pack_bits(codes, bits)


@pack_bits.register_fake
def _(codes: Tensor, bits: int) -> Tensor:
    return codes.new_empty((*codes.shape[:-1], codes.shape[-1] * bits // 8))


@custom_op("xtc_ds::unpack_bits", mutates_args=())
def unpack_bits(packed: Tensor, bits: int) -> Tensor:
    """Same contract as :func:`xtc_ds.quant.packing.unpack_bits`."""
    if _redispatch(packed.device):
        return unpack_bits(packed, bits)
    return packing.unpack_bits(packed, bits)


@unpack_bits.register_fake
def _(packed: Tensor, bits: int) -> Tensor:
    return packed.new_empty((*packed.shape[:-1], packed.shape[-1] * 8 // bits))


def tile_shape(out_features: int, in_features: int, bits: int) -> tuple[int, int, int]:
    """Shape of the CPU kernel layout of an ``(out_features, in_features)`` weight; ValueError if it cannot tile."""
    if out_features % TILE_ROWS or in_features % TILE_INPUTS or in_features <= 0:
        raise ValueError(
            f"prepack_weight: out_features ({out_features}) must be a multiple of {TILE_ROWS} and in_features "
            f"({in_features}) a positive multiple of {TILE_INPUTS}"
        )
    return out_features // TILE_ROWS, in_features // TILE_INPUTS, block_bytes(bits)


def _sign_bits(blocks: Tensor) -> Tensor:
    return packing.pack_bits((blocks > 0).to(torch.uint8), 1)


def _levels_of_sign_bits(kernel_weight: Tensor) -> Tensor:
    return packing.unpack_bits(kernel_weight, 1).to(torch.int32) * 2 - 1


def _ternary_masks(blocks: Tensor) -> Tensor:
    tiles, quads, _ = blocks.shape
    masks = torch.cat([(blocks != 0).to(torch.uint8), (blocks < 0).to(torch.uint8)], dim=-1)
    return packing.pack_bits(masks.reshape(tiles, quads, 2, -1), 1).reshape(tiles, quads, -1)


def _levels_of_ternary_masks(kernel_weight: Tensor) -> Tensor:
    tiles, quads, _ = kernel_weight.shape
    masks = packing.unpack_bits(kernel_weight.reshape(tiles, quads, 2, -1), 1).to(torch.int32)
    return (masks[:, :, 0] * (1 - 2 * masks[:, :, 1])).reshape(tiles, quads, -1)


def _int8(blocks: Tensor) -> Tensor:
    return blocks.to(torch.int8).view(torch.uint8).contiguous()


def _levels_of_int8(kernel_weight: Tensor) -> Tensor:
    return kernel_weight.view(torch.int8).to(torch.int32)


class _Layout(NamedTuple):
    block_bytes: int
    encode: Callable[[Tensor], Tensor]  # levels of each block -> its bytes
    decode: Callable[[Tensor], Tensor]  # bytes -> levels


_LAYOUTS = {
    "sign_bits": _Layout(8, _sign_bits, _levels_of_sign_bits),
    "ternary_masks": _Layout(16, _ternary_masks, _levels_of_ternary_masks),
    "int8": _Layout(64, _int8, _levels_of_int8),
}
"""Each kernel layout of the module docstring's table."""


def _tiles_of_levels(levels: Tensor, bits: int) -> Tensor:
    """``(N, K)`` int32 levels -> the kernel layout (module docstring)."""
    n, k = levels.shape
    tiles, quads, _ = tile_shape(n, k, bits)
    blocks = levels.reshape(tiles, TILE_ROWS, quads, TILE_INPUTS).permute(0, 2, 1, 3).reshape(tiles, quads, -1)
    return _LAYOUTS[_kernel_layout(bits)].encode(blocks)


def _levels_of_tiles(kernel_weight: Tensor, bits: int) -> Tensor:
    """Inverse of :func:`_tiles_of_levels`: ``(N, K)`` int32 levels."""
    tiles, quads, _ = kernel_weight.shape
    blocks = _LAYOUTS[_kernel_layout(bits)].decode(kernel_weight)
    return blocks.reshape(tiles, quads, TILE_ROWS, TILE_INPUTS).permute(0, 2, 1, 3).reshape(tiles * TILE_ROWS, -1)


def _row_levels(packed_weight: Tensor, bits: int, in_features: int) -> Tensor:
    codes = packing.unpack_bits(packed_weight, weight_format(bits).storage_bits)[:, :in_features]
    return levels_of_codes(codes, bits)


def reference_prepack_weight(packed_weight: Tensor, bits: int, in_features: int) -> tuple[Tensor, Tensor]:
    """The reference of :func:`prepack_weight`."""
    levels = _row_levels(packed_weight, bits, in_features)
    row_sum = levels.sum(dim=1, dtype=torch.int32)
    if packed_weight.device.type == "cuda":
        return packed_weight.contiguous().clone(), row_sum
    return _tiles_of_levels(levels, bits), row_sum


@custom_op("xtc_ds::prepack_weight", mutates_args=())
def prepack_weight(packed_weight: Tensor, bits: int, in_features: int) -> tuple[Tensor, Tensor]:
    """Packed rows (uint8 ``(out_features, bytes)``, symmetric codes) -> (kernel layout, int32 row sums of levels)."""
    if _redispatch(packed_weight.device):
        return prepack_weight(packed_weight, bits, in_features)
    return reference_prepack_weight(packed_weight, bits, in_features)


@prepack_weight.register_fake
def _(packed_weight: Tensor, bits: int, in_features: int) -> tuple[Tensor, Tensor]:
    n = packed_weight.shape[0]
    row_sum = packed_weight.new_empty((n,), dtype=torch.int32)
    if packed_weight.device.type == "cuda":
        return packed_weight.new_empty(packed_weight.shape), row_sum
    return packed_weight.new_empty(tile_shape(n, in_features, bits)), row_sum


def reference_packed_linear(
    x: Tensor,
    kernel_weight: Tensor,
    row_sum: Tensor,
    row_scale: Tensor,
    bias: Optional[Tensor],
    bits: int,
    act_bits: int,
) -> Tensor:
    """The reference of :func:`packed_linear`: exactly what the QAT module computes, in ``x``'s dtype."""
    if kernel_weight.dim() == 3:
        levels = _levels_of_tiles(kernel_weight, bits)
    else:
        levels = _row_levels(kernel_weight, bits, x.shape[-1])
    weight = (levels.float() * row_scale.float()[:, None]).to(x.dtype)
    x_q = reference.fake_quant_activation(x, act_bits)
    return F.linear(x_q, weight, None if bias is None else bias.to(x.dtype))


@custom_op("xtc_ds::packed_linear", mutates_args=())
def packed_linear(
    x: Tensor,
    kernel_weight: Tensor,
    row_sum: Tensor,
    row_scale: Tensor,
    bias: Optional[Tensor],
    bits: int,
    act_bits: int,
) -> Tensor:
    """``fake_quant_activation(x) @ (row_scale * levels)^T + bias`` from a :func:`prepack_weight` layout.

    The reference computes in ``x``'s dtype exactly what the QAT module computes; the kernels accumulate the
    integer products in int32 (equal up to float rounding of the final scaling).
    """
    if _redispatch(x.device):
        return packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits)
    return reference_packed_linear(x, kernel_weight, row_sum, row_scale, bias, bits, act_bits)


@packed_linear.register_fake
def _(
    x: Tensor,
    kernel_weight: Tensor,
    row_sum: Tensor,
    row_scale: Tensor,
    bias: Optional[Tensor],
    bits: int,
    act_bits: int,
) -> Tensor:
    return x.new_empty((*x.shape[:-1], row_scale.shape[0]))


OPS = {
    "fake_quant_weight": fake_quant_weight,
    "fake_quant_activation": fake_quant_activation,
    "pack_bits": pack_bits,
    "unpack_bits": unpack_bits,
    "prepack_weight": prepack_weight,
    "packed_linear": packed_linear,
}
