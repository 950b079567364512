"""Packed tensors <-> the initializers of ONNX Runtime's quantized ops, exactly.

A packed module stores codes and per-group scales (:mod:`xtc_ds.quant.reference`); ``MatMulNBits`` and
``GatherBlockQuantized`` store 2-, 4- or 8-bit codes with one scale (and zero point) per block of ``block_size``
codes along a row. The maps below change only the code alphabet and the scale layout, never a value:

- binary code ``c`` (level ``2c - 1``) -> 2-bit code ``2c + 1`` with the default zero point 2 (levels -1, +1);
- ternary code ``c`` (level ``c - 1``) -> 2-bit code ``c + 1`` (levels -1, 0, +1);
- 3..8-bit codes stay as they are, in 4 or 8 bits, with an explicit zero point where it is not ``2^(bits-1)``;
- each block gets the scale of the group it lies in: a block size is chosen so that no block spans two groups
  (any size for per-row or multi-row groups), else the module is refused with the reason.

:func:`packed_from_nbits` inverts the map; the export checks every module's round trip with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from xtc_ds.errors import OnnxExportError
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.quant.packing import pack_bits, unpack_bits
from xtc_ds.quant.reference import QuantizedWeight

__all__ = ["BLOCK_SIZES", "NBitsWeight", "onnx_bits", "to_nbits", "packed_from_nbits"]

BLOCK_SIZES = (16, 32, 64, 128, 256)
"""Block sizes ONNX Runtime accepts (powers of two from 16)."""


def onnx_bits(bits: int) -> int:
    """The ONNX code width of ``bits``-bit weights: 2 for binary and ternary, 4 for 3..4, 8 for 5..8."""
    return 2 if bits <= 2 else (4 if bits <= 4 else 8)


@dataclass(frozen=True)
class NBitsWeight:
    """A weight as ``MatMulNBits``/``GatherBlockQuantized`` hold it.

    Attributes:
        codes: uint8 ``(rows, blocks, block_size * bits / 8)`` packed codes (padding codes are the zero point).
        scales: float32 ``(rows, blocks)``.
        zero_points: uint8 ``(rows, ceil(blocks * bits / 8))`` packed, or None for the default ``2^(bits-1)``.
        bits: 2, 4 or 8.
        block_size: codes per scale along a row.
        columns: codes per row before padding (``K``).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: Optional[torch.Tensor]
    bits: int
    block_size: int
    columns: int


def _group_of_blocks(spec: PackedSpec, block_size: int) -> Optional[torch.Tensor]:
    """Group index of every ``(row, block)``, or None when some block spans two groups."""
    rows, cols = spec.out_features, spec.in_features
    group_len = rows * cols // spec.num_groups
    blocks = -(-cols // block_size)
    start = torch.arange(rows).unsqueeze(1) * cols + torch.arange(blocks).unsqueeze(0) * block_size
    end = torch.minimum(start + block_size, torch.arange(1, rows + 1).unsqueeze(1) * cols) - 1
    first, last = start // group_len, end // group_len
    return first if torch.equal(first, last) else None


def _block_size(spec: PackedSpec, name: str, preferred: int) -> int:
    """``preferred`` (or, for short rows, the smallest size that covers a row) if it keeps every block inside one
    scale group, else the largest smaller size that does."""
    cover = next((size for size in BLOCK_SIZES if size >= spec.in_features), BLOCK_SIZES[-1])
    for size in sorted((s for s in BLOCK_SIZES if s <= min(preferred, cover)), reverse=True):
        if _group_of_blocks(spec, size) is not None:
            return size
    group_len = spec.out_features * spec.in_features // spec.num_groups
    raise OnnxExportError(
        f"{name}: its {spec.num_groups} scale groups of {group_len} weights each do not split its rows of "
        f"{spec.in_features} into blocks of {BLOCK_SIZES[0]}..{preferred} codes (a power of two), which "
        "MatMulNBits needs; export it with one scale per row (quantize_groups = out_features) or per whole rows"
    )


def _code_map(spec: PackedSpec, quantized: QuantizedWeight) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """ONNX codes ``(rows, cols)`` and per-group zero points (None where the ONNX default applies)."""
    codes = quantized.codes.to(torch.int16)
    if spec.bits == 1:
        return (2 * codes + 1).to(torch.uint8), None
    if spec.bits == 2:
        return (codes + 1).to(torch.uint8), None
    if quantized.weight_zero_point is not None:
        return codes.to(torch.uint8), quantized.weight_zero_point.round().to(torch.uint8)
    zero = 2 ** (spec.bits - 1)
    if zero == 2 ** (onnx_bits(spec.bits) - 1):
        return codes.to(torch.uint8), None
    return codes.to(torch.uint8), torch.full((spec.num_groups,), zero, dtype=torch.uint8)


def to_nbits(quantized: QuantizedWeight, spec: PackedSpec, name: str, block_size: int) -> NBitsWeight:
    """The ONNX form of one packed module's codes and scales (``quantized`` as the packed module holds them).

    Raises:
        OnnxExportError: naming ``name`` when its scale groups cannot be mapped onto blocks.
    """
    bits = onnx_bits(spec.bits)
    size = _block_size(spec, name, block_size)
    group = _group_of_blocks(spec, size)
    rows, cols = spec.out_features, spec.in_features
    blocks = group.shape[1]
    codes, zero_points = _code_map(spec, quantized)
    zero = None if zero_points is None else zero_points[group]
    pad_code = 2 ** (bits - 1) if zero is None else 0
    padded = F.pad(codes.reshape(rows, cols), (0, blocks * size - cols), value=pad_code)
    packed = pack_bits(padded.contiguous(), bits).reshape(rows, blocks, size * bits // 8)
    scales = quantized.weight_scale.float()[group].contiguous()
    if zero is not None:
        per_byte = 8 // bits
        zero = pack_bits(F.pad(zero, (0, -blocks % per_byte)).contiguous(), bits)
    return NBitsWeight(packed, scales, zero, bits, size, cols)


def packed_from_nbits(weight: NBitsWeight, spec: PackedSpec) -> QuantizedWeight:
    """The packed module's codes and per-group scales of an ONNX weight: the inverse of :func:`to_nbits`.

    Raises:
        OnnxExportError: when the blocks of one group disagree on its scale or zero point (not an exact map).
    """
    rows, cols = spec.out_features, spec.in_features
    codes = unpack_bits(weight.codes.reshape(rows, -1), weight.bits)[:, :cols].to(torch.int16)
    group = _group_of_blocks(spec, weight.block_size)
    scale = torch.zeros(spec.num_groups).index_put_((group.reshape(-1),), weight.scales.reshape(-1).float())
    if not torch.equal(scale[group], weight.scales.reshape(group.shape).float()):
        raise OnnxExportError("blocks of one scale group hold different scales")
    zero_point = None
    if weight.zero_points is not None:
        zeros = unpack_bits(weight.zero_points, weight.bits)[:, : group.shape[1]]
        if spec.bits > 2 and not spec.symmetric:
            zero_point = torch.zeros(spec.num_groups).index_put_((group.reshape(-1),), zeros.reshape(-1).float())
    if spec.bits == 1:
        codes = (codes - 1) // 2
    elif spec.bits == 2:
        codes = codes - 1
    return QuantizedWeight(codes.to(torch.uint8).reshape(rows, cols), scale, zero_point)
