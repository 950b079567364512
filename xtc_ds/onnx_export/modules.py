"""Export-time stand-ins for packed modules: the same arithmetic, written with ops ``torch.onnx.export`` can emit.

:func:`onnx_ready` returns a copy of a model from :func:`xtc_ds.load_packed` in which every packed Linear is an
:class:`NBitsLinear` (``MatMulNBits``) or, with ``linear_op="MatMulIntegerToFloat"`` and 8-bit activations, an
:class:`Int8Linear` (ONNX Runtime's int8 GEMM); every packed embedding an :class:`NBitsEmbedding`
(``GatherBlockQuantized``, or a 1-bit unpack from standard ops) and every activation-only module an
:class:`ActQuantLinear`. Activations are quantized per token with standard ONNX ops (:func:`fake_quant_activation`,
the reference quantizer's grid) unless the op quantizes them itself (``accuracy_level`` 4: ``MatMulNBits`` per
block of K, ``MatMulIntegerToFloat`` per tensor).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds.errors import OnnxExportError
from xtc_ds.inject import set_submodule
from xtc_ds.nn.packed_embedding import XtcPackedEmbedding
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.nn.qat_linear import is_conv1d
from xtc_ds.onnx_export import ops
from xtc_ds.onnx_export.mapping import Int8Weight, NBitsWeight, to_int8, to_nbits
from xtc_ds.onnx_export.options import AccuracyLevel, LinearOp, OnnxExportOptions

__all__ = [
    "NBitsLinear",
    "Int8Linear",
    "NBitsEmbedding",
    "ActQuantLinear",
    "fake_quant_activation",
    "onnx_ready",
]

_TINY = torch.finfo(torch.float32).tiny


def fake_quant_activation(
    x: torch.Tensor, bits: int, symmetric: bool, low: Optional[torch.Tensor], high: Optional[torch.Tensor]
) -> torch.Tensor:
    """:func:`xtc_ds.quant.reference.fake_quant_activation` (same values) in ops every ONNX opset has."""
    x = x.float()
    if symmetric:
        q_max = 2 ** (bits - 1) - 1
        amax = x.abs().amax(dim=-1, keepdim=True) if high is None else torch.maximum(low.abs(), high.abs())
        scale = (amax / q_max).clamp_min(_TINY)
        return torch.round(x / scale).clamp(-q_max, q_max) * scale
    q_max = 2**bits - 1
    x_min = x.amin(dim=-1, keepdim=True) if low is None else low
    x_max = x.amax(dim=-1, keepdim=True) if high is None else high
    x_min, x_max = x_min.clamp(max=0.0), x_max.clamp(min=0.0)
    scale = ((x_max - x_min) / q_max).clamp_min(_TINY)
    zero_point = torch.round(-x_min / scale)
    return (torch.round(x / scale).add(zero_point).clamp(0, q_max) - zero_point) * scale


class _ActQuant(nn.Module):
    """The input quantizer of a spec (dynamic per token, or the static ``act_range``)."""

    def __init__(self, spec: PackedSpec, act_range: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.bits, self.symmetric = spec.act_bits, spec.act_symmetric
        self.register_buffer("act_range", None if act_range is None else act_range.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = (None, None) if self.act_range is None else (self.act_range[0], self.act_range[1])
        return fake_quant_activation(x, self.bits, self.symmetric, low, high)


class NBitsLinear(nn.Module):
    """A packed Linear as one ``MatMulNBits`` (bias included), after its activation quantizer where needed."""

    def __init__(self, weight: NBitsWeight, bias: Optional[torch.Tensor], act: Optional[_ActQuant], level: int):
        super().__init__()
        self.k, self.n = weight.columns, weight.codes.shape[0]
        self.bits, self.block_size, self.accuracy_level = weight.bits, weight.block_size, level
        self.register_buffer("codes", weight.codes)
        self.register_buffer("scales", weight.scales.reshape(-1))
        self.register_buffer("zero_points", weight.zero_points)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return ops.matmul_nbits(
            x.float(), self.codes, self.scales, self.zero_points, self.bias,
            self.k, self.n, self.bits, self.block_size, self.accuracy_level,
        )  # fmt: skip


class Int8Linear(nn.Module):
    """A packed Linear as one ``MatMulIntegerToFloat``: its levels as int8 ``B`` (stored compactly in the file,
    :mod:`xtc_ds.onnx_export.compact`), activations quantized by ONNX Runtime (uint8, one scale per tensor)."""

    def __init__(self, weight: Int8Weight, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.register_buffer("int8_weight", weight.matrix)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zero_points", weight.zero_points)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dynamic_quantize_matmul(x.float(), self.int8_weight, self.scales, self.zero_points, self.bias)


class NBitsEmbedding(nn.Module):
    """A packed embedding: 1-bit rows unpacked with standard ops, 2/4/8-bit ones with ``GatherBlockQuantized``."""

    def __init__(self, packed: XtcPackedEmbedding, name: str, block_size: int) -> None:
        super().__init__()
        spec = packed.spec
        self.dim, self.one_bit = spec.in_features, spec.format.single_bit
        if self.one_bit:
            self.register_buffer("codes", packed.packed_weight.clone())
            self.register_buffer("scales", packed.weight_scale.float().clone())
            return
        weight = to_nbits(packed.quantized_weight(), spec, name, block_size)
        self.bits, self.block_size = weight.bits, weight.block_size
        if spec.in_features * weight.bits % 8:
            raise OnnxExportError(
                f"{name}: rows of {spec.in_features} {weight.bits}-bit codes do not fill whole bytes"
            )
        row_bytes = spec.in_features * weight.bits // 8  # GatherBlockQuantized rows are not padded to whole blocks
        self.register_buffer("codes", weight.codes.reshape(spec.out_features, -1)[:, :row_bytes].contiguous())
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zero_points", weight.zero_points)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.one_bit:
            return ops.gather_bits1(self.codes, input_ids, self.scales, self.dim)
        return ops.gather_block_quantized(
            self.codes, input_ids, self.scales, self.zero_points, self.bits, self.block_size, self.dim
        )


class ActQuantLinear(nn.Module):
    """A float Linear whose input is quantized (a module the config gives activation quantization only)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], act: _ActQuant) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.weight, self.bias)


def _act_only_parts(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Weight ``(out, in)``, bias and static range of a QAT module that quantizes only its input."""
    quantizer = module.act_quantizer
    weight = module.weight.t() if is_conv1d(module) else module.weight
    act_range = torch.stack([quantizer.x_min, quantizer.x_max]) if quantizer.static else None
    return weight, module.bias, act_range


def onnx_ready(model: nn.Module, specs: dict[str, PackedSpec], options: OnnxExportOptions) -> nn.Module:
    """A copy of a packed model (from :func:`xtc_ds.load_packed`) with export-time modules in place of packed ones.

    ``accuracy_level`` 4 lets ``MatMulNBits`` (or, with ``linear_op="MatMulIntegerToFloat"``, ONNX Runtime's int8
    GEMM) quantize the inputs of 8-bit-activation modules itself; elsewhere (level 0, weight-only modules, 4-bit
    activations) the module's own quantizer runs as standard ONNX ops before a ``MatMulNBits``.
    """
    registered = {name: spec.weight_format for name, spec in specs.items() if spec.weight_format is not None}
    if registered:
        name, form = next(iter(registered.items()))
        raise OnnxExportError(
            f"{name}: its weight format {form!r} is a registered one, which the ONNX export does not map to ONNX "
            "Runtime's quantized ops; serve it with xtc_ds.load_packed"
        )
    ready = copy.deepcopy(model)
    modules = dict(ready.named_modules())
    for name, spec in specs.items():
        module = modules[name]
        if spec.bits is None:
            weight, bias, act_range = _act_only_parts(module)
            set_submodule(ready, name, ActQuantLinear(weight, bias, _ActQuant(spec, act_range)))
        elif spec.kind == "embedding":
            set_submodule(ready, name, NBitsEmbedding(module, name, options.block_size))
        else:
            native = options.accuracy_level is AccuracyLevel.INT8 and spec.act_bits == 8
            if native and options.linear_op is LinearOp.MATMUL_INTEGER_TO_FLOAT:
                set_submodule(ready, name, Int8Linear(to_int8(module.quantized_weight(), spec, name), module.bias))
                continue
            act = None if spec.act_bits is None or native else _ActQuant(spec, module.act_range)
            weight = to_nbits(module.quantized_weight(), spec, name, options.block_size)
            level = int(options.accuracy_level) if native else int(AccuracyLevel.FLOAT32)
            set_submodule(ready, name, NBitsLinear(weight, module.bias, act, level))
    return ready.eval()
