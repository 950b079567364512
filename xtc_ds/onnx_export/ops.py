"""The ONNX Runtime contrib ops an XTC model is exported with, as PyTorch custom ops.

Each op has a pure-PyTorch implementation (the ONNX Runtime op's documented arithmetic, used while tracing and in
tests) and a translation to its ``com.microsoft`` node, passed to ``torch.onnx.export`` as
``custom_translation_table``:

- ``matmul_nbits``: ``com.microsoft::MatMulNBits``: ``Y = A @ W.T + bias`` with
  ``W[n, k] = (q[n, k] - zero_point[n, k // block_size]) * scales[n, k // block_size]``; ``q`` is 2-, 4- or 8-bit,
  packed along K least-significant first (the :mod:`xtc_ds.quant.packing` layout), ``B`` of shape
  ``(N, K / block_size, block_size * bits / 8)``; the zero point defaults to ``2^(bits-1)``.
- ``gather_block_quantized``: ``com.microsoft::GatherBlockQuantized`` on axis 0 with blocks along axis 1, the same
  code layout and default zero point (2-, 4- and 8-bit rows).
- ``dynamic_quantize_matmul``: ``DynamicQuantizeLinear`` then ``com.microsoft::MatMulIntegerToFloat``: ``A``
  quantized to uint8 over the whole tensor (range widened to include 0), multiplied in integers by ``B`` (int8 or
  uint8 ``(K, N)``, minus its per-column zero point), scaled by ``a_scale * b_scale[n]``, plus ``bias``: ONNX
  Runtime's int8 GEMM (AMX or VNNI where the CPU has them), as ``quantize_dynamic`` writes it. ONNX Runtime fuses
  the pair into ``DynamicQuantizeMatMul`` where the quantized input has one consumer and quantizes an input shared
  by several Linears (query, key, value) once.
- ``gather_bits1``: 1-bit rows (``2 * bit - 1`` times the row's scale) gathered and unpacked with standard ONNX
  ops (GatherBlockQuantized has no 1-bit form; this keeps the table at 1 bit per weight).
"""

from __future__ import annotations

from typing import Optional

import torch

from xtc_ds.quant.packing import unpack_bits

__all__ = [
    "matmul_nbits",
    "dynamic_quantize_matmul",
    "quantize_per_tensor_uint8",
    "gather_block_quantized",
    "gather_bits1",
    "block_dequantize",
    "translations",
    "MS_DOMAIN",
]

MS_DOMAIN = "com.microsoft"


def block_dequantize(
    codes: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor], bits: int, block_size: int
) -> torch.Tensor:
    """float32 ``(rows, cols)`` of uint8 codes with one scale (and zero point) per ``block_size`` codes of a row."""
    rows, cols = codes.shape
    blocks = -(-cols // block_size)
    scale = scales.reshape(rows, blocks).float().repeat_interleave(block_size, dim=1)[:, :cols]
    if zero_points is None:
        zero = torch.full((), float(2 ** (bits - 1)))
    else:
        zero = unpack_bits(zero_points, bits)[:, :blocks].float().repeat_interleave(block_size, dim=1)[:, :cols]
    return (codes.float() - zero) * scale


@torch.library.custom_op("xtc_onnx::matmul_nbits", mutates_args=())
def matmul_nbits(
    a: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    zero_points: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    k: int,
    n: int,
    bits: int,
    block_size: int,
    accuracy_level: int,
) -> torch.Tensor:
    """MatMulNBits with float32 arithmetic (ONNX Runtime's ``accuracy_level`` 0)."""
    codes = unpack_bits(b.reshape(n, -1), bits)[:, :k]
    weight = block_dequantize(codes, scales, zero_points, bits, block_size)
    return torch.nn.functional.linear(a.float(), weight, bias)


@matmul_nbits.register_fake
def _(a, b, scales, zero_points, bias, k, n, bits, block_size, accuracy_level):
    return a.new_empty((*a.shape[:-1], n))


def quantize_per_tensor_uint8(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, scale, zero_point)`` of ONNX Runtime's dynamic uint8 quantization of ``a`` (one scale for the
    tensor; range widened to include 0; round half to even)."""
    low, high = a.min().clamp(max=0.0), a.max().clamp(min=0.0)
    scale = torch.where(high == low, torch.ones_like(high), (high - low) / 255)
    zero_point = torch.round((-low / scale).clamp(0, 255))
    return torch.clamp(torch.round(a / scale) + zero_point, 0, 255), scale, zero_point


@torch.library.custom_op("xtc_onnx::dynamic_quantize_matmul", mutates_args=())
def dynamic_quantize_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """DynamicQuantizeLinear + MatMulIntegerToFloat: integer products accumulated exactly, then scaled (float32)."""
    codes, a_scale, a_zero = quantize_per_tensor_uint8(a.float())
    weight = b.double() if b_zero_point is None else b.double() - b_zero_point.double()
    exact = torch.matmul(codes.double() - a_zero.double(), weight)
    out = exact.float() * (a_scale * b_scale.float())
    return out if bias is None else out + bias


@dynamic_quantize_matmul.register_fake
def _(a, b, b_scale, b_zero_point, bias):
    return a.new_empty((*a.shape[:-1], b.shape[1]))


@torch.library.custom_op("xtc_onnx::gather_block_quantized", mutates_args=())
def gather_block_quantized(
    data: torch.Tensor,
    indices: torch.Tensor,
    scales: torch.Tensor,
    zero_points: Optional[torch.Tensor],
    bits: int,
    block_size: int,
    dim: int,
) -> torch.Tensor:
    """Rows ``indices`` of a block-quantized table of ``dim`` columns, dequantized."""
    flat = indices.reshape(-1)
    codes = unpack_bits(data[flat], bits)[:, :dim]
    zero = None if zero_points is None else zero_points[flat]
    rows = block_dequantize(codes, scales[flat], zero, bits, block_size)
    return rows.reshape(*indices.shape, dim)


@gather_block_quantized.register_fake
def _(data, indices, scales, zero_points, bits, block_size, dim):
    return scales.new_empty((*indices.shape, dim))


@torch.library.custom_op("xtc_onnx::gather_bits1", mutates_args=())
def gather_bits1(data: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows ``indices`` of a 1-bit table (codes 1 -> +scale, 0 -> -scale), dequantized."""
    flat = indices.reshape(-1)
    signs = unpack_bits(data[flat], 1)[:, :dim].float() * 2 - 1
    return (signs * scales[flat].reshape(-1, 1)).reshape(*indices.shape, dim)


@gather_bits1.register_fake
def _(data, indices, scales, dim):
    return scales.new_empty((*indices.shape, dim))


def _schema(name: str, inputs: list[tuple[str, str, bool]], attributes: dict[str, int]) -> object:
    """An ``onnx.defs.OpSchema`` of an ORT contrib op (``onnx`` ships none), for onnxscript to build nodes with."""
    from onnx.defs import OpSchema

    optional, single = OpSchema.FormalParameterOption.Optional, OpSchema.FormalParameterOption.Single
    types = {
        "T1": ["tensor(float)"],
        "T2": ["tensor(uint8)"],
        "T3": ["tensor(int64)", "tensor(int32)"],
        "T8": ["tensor(int8)", "tensor(uint8)"],
    }
    used = sorted({kind for _, kind, _ in inputs} | {"T1"})
    return OpSchema(
        name,
        MS_DOMAIN,
        1,
        inputs=[
            OpSchema.FormalParameter(n, kind, param_option=optional if opt else single) for n, kind, opt in inputs
        ],
        outputs=[OpSchema.FormalParameter("Y", "T1")],
        type_constraints=[(kind, types[kind], kind) for kind in used],
        attributes=[OpSchema.Attribute(attr, OpSchema.AttrType.INT, attr) for attr in attributes],
    )


def translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` (onnx and onnxscript are imported only here)."""
    from onnx import TensorProto
    from onnxscript import opset20 as op
    from onnxscript.values import Op, Opset

    ms = Opset(MS_DOMAIN, 1)
    matmul = Op(
        ms,
        "MatMulNBits",
        _schema(
            "MatMulNBits",
            [
                ("A", "T1", False),
                ("B", "T2", False),
                ("scales", "T1", True),
                ("zero_points", "T2", True),
                ("g_idx", "T3", True),
                ("bias", "T1", True),
            ],
            {"K": 0, "N": 0, "bits": 0, "block_size": 0, "accuracy_level": 0},
        ),
    )
    gather = Op(
        ms,
        "GatherBlockQuantized",
        _schema(
            "GatherBlockQuantized",
            [("data", "T2", False), ("indices", "T3", False), ("scales", "T1", False), ("zero_points", "T2", True)],
            {"bits": 0, "block_size": 0, "gather_axis": 0, "quantize_axis": 0},
        ),
    )

    int8_matmul = Op(
        ms,
        "MatMulIntegerToFloat",
        _schema(
            "MatMulIntegerToFloat",
            [("A", "T2", False), ("B", "T8", False), ("a_scale", "T1", False), ("b_scale", "T1", False),
             ("a_zero_point", "T2", True), ("b_zero_point", "T8", True), ("bias", "T1", True)],
            {},
        ),
    )  # fmt: skip

    def onnx_matmul_nbits(a, b, scales, zero_points, bias, k, n, bits, block_size, accuracy_level):
        return matmul(
            a, b, scales, zero_points, None, bias,
            K=k, N=n, bits=bits, block_size=block_size, accuracy_level=accuracy_level,
        )  # fmt: skip

    def onnx_dynamic_quantize_matmul(a, b, b_scale, b_zero_point, bias):
        codes, a_scale, a_zero_point = op.DynamicQuantizeLinear(a)
        return int8_matmul(codes, b, a_scale, b_scale, a_zero_point, b_zero_point, bias)

    def onnx_gather_block_quantized(data, indices, scales, zero_points, bits, block_size, dim):
        return gather(
            data, indices, scales, zero_points, bits=bits, block_size=block_size, gather_axis=0, quantize_axis=1
        )

    def onnx_gather_bits1(data, indices, scales, dim):
        packed = op.Unsqueeze(op.Gather(data, indices, axis=0), [-1])
        shifts = op.Cast(op.Constant(value_ints=[0, 1, 2, 3, 4, 5, 6, 7]), to=TensorProto.UINT8)
        one = op.Cast(op.Constant(value_int=1), to=TensorProto.UINT8)
        bit = op.BitwiseAnd(op.BitShift(packed, shifts, direction="RIGHT"), one)
        shape = op.Concat(op.Shape(indices), op.Constant(value_ints=[-1]), axis=0)
        signs = op.Sub(op.Mul(op.Cast(op.Reshape(bit, shape), to=TensorProto.FLOAT), 2.0), 1.0)
        signs = op.Slice(
            signs, op.Constant(value_ints=[0]), op.Constant(value_ints=[dim]), op.Constant(value_ints=[-1])
        )
        return op.Mul(signs, op.Unsqueeze(op.Gather(scales, indices, axis=0), [-1]))

    return {
        torch.ops.xtc_onnx.matmul_nbits.default: onnx_matmul_nbits,
        torch.ops.xtc_onnx.dynamic_quantize_matmul.default: onnx_dynamic_quantize_matmul,
        torch.ops.xtc_onnx.gather_block_quantized.default: onnx_gather_block_quantized,
        torch.ops.xtc_onnx.gather_bits1.default: onnx_gather_bits1,
    }
