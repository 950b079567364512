"""The compact file form of a sparse-pruned weight: a bitmap of its nonzero weights and the codes of those alone.

A sparse weight's packed codes are mostly the code of 0. The compact form stores one bit per weight (nonzero or
not) and, for each nonzero weight in row-major order, its code: at 1 bit for ternary weights (whose nonzero codes
are only -1 and +1: a sparse binary weight is ternary) and at the storage width otherwise. An export uses it for a
module only where it is smaller than the dense codes; :func:`expand_compact` rebuilds the dense codes at load, so
packed inference is unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from xtc_ds import ops
from xtc_ds.nn.packed_linear import unpacked_codes
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.quant.packing import padded_length

__all__ = ["BITMAP", "VALUES", "compact_form", "expand_compact"]

BITMAP, VALUES = "sparse_bitmap", "sparse_values"


def _pack_flat(codes: torch.Tensor, bits: int) -> torch.Tensor:
    codes = codes.reshape(-1).to(torch.uint8)
    return ops.pack_bits(F.pad(codes, (0, padded_length(codes.numel(), bits) - codes.numel())).contiguous(), bits)


def compact_form(packed_weight: torch.Tensor, spec: PackedSpec) -> Optional[dict[str, torch.Tensor]]:
    """``{sparse_bitmap, sparse_values}`` of a packed weight, or None when they would not be smaller."""
    form = spec.format
    if form.zero_code is None:
        return None
    codes = unpacked_codes(packed_weight, spec)
    nonzero = codes != form.zero_code
    compact = {
        BITMAP: _pack_flat(nonzero, 1),
        VALUES: _pack_flat(form.sparse_values(codes[nonzero]), form.sparse_value_bits),
    }
    return compact if sum(t.numel() for t in compact.values()) < packed_weight.numel() else None


def expand_compact(bitmap: torch.Tensor, values: torch.Tensor, spec: PackedSpec) -> torch.Tensor:
    """The dense ``packed_weight`` of a compact form.

    Raises:
        ValueError: the bitmap does not hold one bit per weight, or the values do not match its nonzero count.
    """
    numel = spec.out_features * spec.in_features
    if bitmap.dtype != torch.uint8 or bitmap.dim() != 1 or bitmap.numel() != padded_length(numel, 1) // 8:
        raise ValueError(f"{BITMAP} must be {padded_length(numel, 1) // 8} uint8 bytes (one bit per weight)")
    nonzero = ops.unpack_bits(bitmap, 1)[:numel].bool().reshape(spec.out_features, spec.in_features)
    form = spec.format
    if form.zero_code is None:
        raise ValueError(f"{form.name} weights have no sparse form (no code of 0)")
    count, bits = int(nonzero.sum()), form.sparse_value_bits
    if values.dtype != torch.uint8 or values.dim() != 1 or values.numel() != padded_length(count, bits) * bits // 8:
        raise ValueError(f"{VALUES} must hold {count} codes of {bits} bits (the bitmap's nonzero weights)")
    kept = ops.unpack_bits(values, bits)[:count]
    codes = torch.full(nonzero.shape, form.zero_code, dtype=torch.uint8)
    codes[nonzero] = form.codes_of_sparse_values(kept)
    dense_bits = form.storage_bits
    padding = padded_length(spec.in_features, dense_bits) - spec.in_features
    return ops.pack_bits(F.pad(codes, (0, padding)).contiguous(), dense_bits)
