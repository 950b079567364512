"""Bit packing of 1-, 2-, 4- and 8-bit codes: THE packed layout, in pure PyTorch (the fused op must match).

Layout: codes are unsigned integers ``0 .. 2^bits - 1`` in a ``uint8`` tensor. They are packed along the
last dimension, ``8 // bits`` adjacent codes per byte, the first code in the least-significant bits.
The last dimension must be a multiple of ``8 // bits``.

Worked example (pinned by a test)::

    1-bit codes [1, 0, 1, 1, 0, 0, 0, 1] -> one byte 0b10001101 = 0x8D
    2-bit codes [2, 0, 1, 2]             -> one byte 0b10_01_00_10 = 0x92

Rows whose length is not a multiple of ``8 // bits`` are padded with zero codes to
:func:`padded_length` before packing (packed checkpoints record the true length in their config).

Binary weights store ``1`` for ``w >= 0`` (value +alpha) and ``0`` otherwise; ternary weights store
``value + 1`` in ``{0, 1, 2}`` (3 is unused).
"""

from __future__ import annotations

import torch

__all__ = ["PACK_BITS", "check_pack_args", "pack_bits", "unpack_bits", "padded_length"]

PACK_BITS = (1, 2, 4, 8)


def check_pack_args(tensor: torch.Tensor, bits: int, packing: bool) -> int:
    """Validate arguments of :func:`pack_bits` (``packing``) or :func:`unpack_bits`; returns codes per byte."""
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    per_byte = 8 // bits
    if tensor.dtype != torch.uint8:
        raise TypeError(f"{'codes' if packing else 'packed'} must be uint8, got {tensor.dtype}")
    if tensor.dim() == 0:
        raise ValueError("expected at least one dimension")
    if packing and tensor.shape[-1] % per_byte:
        raise ValueError(
            f"the last dimension ({tensor.shape[-1]}) must be a multiple of {per_byte} to pack {bits}-bit codes"
        )
    return per_byte


def padded_length(length: int, bits: int) -> int:
    """``length`` rounded up to whole bytes of ``bits``-bit codes: packed rows are zero-padded to this."""
    per_byte = 8 // bits
    return -(-length // per_byte) * per_byte


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes`` (uint8, values < 2^bits, shape ``(..., n)``) into ``(..., n * bits // 8)`` uint8."""
    per_byte = check_pack_args(codes, bits, packing=True)
    n = codes.shape[-1]
    if bits == 8:
        return codes.clone()
    grouped = codes.reshape(*codes.shape[:-1], n // per_byte, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=codes.device) * bits
    return (grouped << shifts).sum(dim=-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(..., m)`` uint8 -> ``(..., m * 8 // bits)`` uint8 codes."""
    per_byte = check_pack_args(packed, bits, packing=False)
    if bits == 8:
        return packed.clone()
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.to(torch.uint8).reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)
