"""How an ONNX export is written: one frozen record, shared by :func:`~xtc_ds.onnx_export.export_onnx` and the
``python -m xtc_ds.export --format onnx`` command line, which takes its choices from the enums below."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Union

from xtc_ds.errors import OnnxExportError

__all__ = ["LinearOp", "AccuracyLevel", "BLOCK_SIZES", "DEFAULT_BLOCK_SIZE", "OnnxExportOptions"]


class LinearOp(str, Enum):
    """The ONNX Runtime op a quantized Linear with 8-bit activations becomes."""

    MATMUL_NBITS = "MatMulNBits"
    """2/4/8-bit codes with per-block scales; ``accuracy_level`` chooses the arithmetic."""
    MATMUL_INTEGER_TO_FLOAT = "MatMulIntegerToFloat"
    """ONNX Runtime's int8 GEMM (AMX or VNNI where the CPU has them), its int8 weight rebuilt at load from the codes
    stored at their own width; activations quantized by ONNX Runtime per tensor; needs ``AccuracyLevel.INT8``."""


class AccuracyLevel(IntEnum):
    """``MatMulNBits`` arithmetic."""

    FLOAT32 = 0
    """float32, after quantizing activations exactly as xtc_ds does (within float rounding of ``load_packed``)."""
    INT8 = 4
    """8-bit-activation inputs quantized to int8 inside ONNX Runtime (fastest; logits within about 1e-2)."""


BLOCK_SIZES = (16, 32, 64, 128, 256)
"""Block sizes ONNX Runtime accepts (powers of two from 16)."""
DEFAULT_BLOCK_SIZE = 128


def _member(enum: type, value: Any, name: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = tuple(member.value for member in enum)
        raise OnnxExportError(f"{name} must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class OnnxExportOptions:
    """What :func:`~xtc_ds.onnx_export.export_onnx` writes.

    Attributes:
        accuracy_level: :class:`AccuracyLevel` (or its int).
        block_size: codes per scale along a row (:data:`BLOCK_SIZES`); smaller where the scale groups need it.
        one_bit_storage: store binary weights at 1 bit in ``model.onnx`` (2 bits otherwise), expanded when ONNX
            Runtime loads the model. The file shrinks by about a third, but loading briefly needs several bytes
            per weight (BERT-base: 716 MB peak instead of 80 MB), so it is off by default.
        linear_op: :class:`LinearOp` (or its name). Linears without 8-bit activations stay ``MatMulNBits``.
    Raises:
        OnnxExportError: a value out of its choices, or ``MatMulIntegerToFloat`` at ``accuracy_level`` 0.
    """

    accuracy_level: Union[AccuracyLevel, int] = AccuracyLevel.INT8
    block_size: int = DEFAULT_BLOCK_SIZE
    one_bit_storage: bool = False
    linear_op: Union[LinearOp, str] = LinearOp.MATMUL_NBITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "accuracy_level", _member(AccuracyLevel, self.accuracy_level, "accuracy_level"))
        object.__setattr__(self, "linear_op", _member(LinearOp, self.linear_op, "linear_op"))
        if self.block_size not in BLOCK_SIZES:
            raise OnnxExportError(f"block_size must be a power of two from 16 to 256, got {self.block_size!r}")
        if self.linear_op is LinearOp.MATMUL_INTEGER_TO_FLOAT and self.accuracy_level is not AccuracyLevel.INT8:
            raise OnnxExportError(
                "linear_op='MatMulIntegerToFloat' quantizes activations to int8 (accuracy_level 4); "
                f"accuracy_level={int(self.accuracy_level)} needs linear_op='MatMulNBits'"
            )

    def record(self) -> dict[str, Any]:
        """The options as ``xtc_onnx.json`` records them (plain ints and strings)."""
        return {
            "accuracy_level": int(self.accuracy_level),
            "block_size": self.block_size,
            "one_bit_storage": self.one_bit_storage,
            "linear_op": self.linear_op.value,
        }
