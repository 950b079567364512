"""Packed tensors <-> the initializers of ONNX Runtime's quantized ops, exactly.

A packed module stores codes and per-group scales (:mod:`xtc_ds.quant.reference`); ``MatMulNBits`` and
``GatherBlockQuantized`` store 2-, 4- or 8-bit codes with one scale (and zero point) per block of ``block_size``
codes along a row. The maps below change only the code alphabet and the scale layout, never a value:

- a code of a format without zero points (:mod:`xtc_ds.quant.formats`) -> its level plus the default zero point
  ``2^(bits-1)`` of the ONNX width (binary ``c`` -> 2-bit ``2c + 1``, ternary ``c`` -> 2-bit ``c + 1``, 3..8-bit
  symmetric ``c`` -> ``c - 2^(b-1) + 2^(bits-1)`` in 4 or 8 bits: ``c`` itself at 4 and 8 bits);
- asymmetric codes stay as they are, with their zero points;
- each block gets the scale of the group it lies in: a block size is chosen so that no block spans two groups
  (any size for per-row or multi-row groups), else the module is refused with the reason.

``MatMulIntegerToFloat`` (ONNX Runtime's int8 GEMM) takes ``B`` as int8 ``(K, N)`` with one scale (and zero
point) per column, i.e. per output row of the weight: :func:`to_int8` writes each weight's signed levels there
(:meth:`WeightFormat.levels`), or, for asymmetric weights, the uint8 codes
with their zero points; groups must be whole rows. :func:`int8_code_map` is the affine map from codes to those
entries, with which the file stores the codes at their own width (:mod:`xtc_ds.onnx_export.compact`).

:func:`packed_from_nbits` and :func:`packed_from_int8` invert the maps; the export checks every module's round
trip with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from xtc_ds.errors import OnnxExportError
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.onnx_export.options import BLOCK_SIZES
from xtc_ds.quant.formats import weight_format
from xtc_ds.quant.packing import pack_bits, unpack_bits
from xtc_ds.quant.reference import QuantizedWeight

__all__ = [
    "NBitsWeight",
    "Int8Weight",
    "onnx_bits",
    "to_nbits",
    "packed_from_nbits",
    "int8_code_map",
    "to_int8",
    "packed_from_int8",
]


def onnx_bits(bits: int) -> int:
    """The ONNX code width of ``bits``-bit weights: the stored width, at least 2 (ONNX has no 1-bit codes)."""
    return max(2, weight_format(bits).storage_bits)


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
    if spec.format.has_zero_point:
        return quantized.codes.to(torch.uint8), quantized.weight_zero_point.round().to(torch.uint8)
    return (spec.format.levels(quantized.codes) + 2 ** (onnx_bits(spec.bits) - 1)).to(torch.uint8), None


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
    zeros = None
    if weight.zero_points is not None:
        zeros = unpack_bits(weight.zero_points, weight.bits)[:, : group.shape[1]]
    if spec.format.has_zero_point:
        if zeros is None:
            raise OnnxExportError("an asymmetric weight without zero points")
        zero_point = torch.zeros(spec.num_groups).index_put_((group.reshape(-1),), zeros.reshape(-1).float())
        return QuantizedWeight(codes.to(torch.uint8), scale, zero_point)
    if zeros is None:
        levels = codes - 2 ** (weight.bits - 1)
    else:  # files written before the level map: codes with an explicit zero point per block
        levels = codes - zeros.to(torch.int16).repeat_interleave(weight.block_size, dim=1)[:, :cols]
    return QuantizedWeight(spec.format.codes_of_levels(levels).to(torch.uint8), scale, None)


@dataclass(frozen=True)
class Int8Weight:
    """A weight as ``MatMulIntegerToFloat`` holds it.

    Attributes:
        matrix: ``(K, N)``: int8 signed levels, or uint8 codes for asymmetric weights.
        scales: float32 ``(N,)``, the scale of each output row.
        zero_points: uint8 ``(N,)`` for asymmetric weights, else None.
    """

    matrix: torch.Tensor
    scales: torch.Tensor
    zero_points: Optional[torch.Tensor]


def int8_code_map(spec: PackedSpec) -> tuple[int, int]:
    """``(base, step)`` with ``matrix entry = base + step * code`` for a module's codes."""
    form = spec.format
    return -(form.level_offset or 0), form.level_step


def _row_groups(spec: PackedSpec, name: str) -> torch.Tensor:
    """The scale group of every output row; refuses groups that split a row."""
    rows_per_group, rest = divmod(spec.out_features, spec.num_groups)
    if rest or not rows_per_group:
        raise OnnxExportError(
            f"{name}: its {spec.num_groups} scale groups split its rows of {spec.in_features} weights, and "
            "MatMulIntegerToFloat takes one scale per output row; export it with linear_op='MatMulNBits' or "
            "quantize with quantize_groups dividing out_features"
        )
    return torch.arange(spec.out_features) // rows_per_group


def to_int8(quantized: QuantizedWeight, spec: PackedSpec, name: str) -> Int8Weight:
    """The ``MatMulIntegerToFloat`` form of one packed module's codes and scales.

    Raises:
        OnnxExportError: naming ``name`` when a scale group splits a row.
    """
    group = _row_groups(spec, name)
    base, step = int8_code_map(spec)
    codes = quantized.codes.reshape(spec.out_features, spec.in_features).to(torch.int16)
    dtype = torch.int8 if base < 0 else torch.uint8
    matrix = (base + step * codes).to(dtype).t().contiguous()
    zero = quantized.weight_zero_point
    zero_points = None if zero is None else zero.round().to(torch.uint8)[group].contiguous()
    return Int8Weight(matrix, quantized.weight_scale.float()[group].contiguous(), zero_points)


def packed_from_int8(weight: Int8Weight, spec: PackedSpec) -> QuantizedWeight:
    """The packed module's codes and per-group scales of a ``MatMulIntegerToFloat`` weight: the inverse of
    :func:`to_int8`.

    Raises:
        OnnxExportError: when the rows of one group disagree on its scale or zero point, or an entry is not a code.
    """
    group = _row_groups(spec, "the weight")
    base, step = int8_code_map(spec)
    offsets = weight.matrix.t().to(torch.int16) - base
    if (offsets % step).any() or (offsets < 0).any() or (offsets // step >= 2**spec.bits).any():
        raise OnnxExportError(f"B holds entries that are not {spec.bits}-bit codes")
    scale = torch.zeros(spec.num_groups).index_put_((group,), weight.scales.float())
    zero_point = None
    if weight.zero_points is not None:
        zero_point = torch.zeros(spec.num_groups).index_put_((group,), weight.zero_points.float())
        if not torch.equal(zero_point[group], weight.zero_points.float()):
            raise OnnxExportError("rows of one scale group hold different zero points")
    if not torch.equal(scale[group], weight.scales.float()):
        raise OnnxExportError("rows of one scale group hold different scales")
    return QuantizedWeight((offsets // step).to(torch.uint8), scale, zero_point)
