"""XtcPackedLinear: a Linear (or GPT-2 Conv1D) whose weight stays packed in memory.

The forward pass is the QAT module's forward, evaluated from the packed codes: the input is quantized by the
same activation quantizer and multiplied by the quantized weight. Where the spec fits the packed linear op
(symmetric per-token activations, symmetric weights, tileable shapes) the module calls ``ops.packed_linear`` on
the device's kernel layout of the weight (with the CPU kernel: AVX512-VNNI integer dot products, the weight is
never expanded to float); elsewhere it dequantizes the weight. Both reference paths give exactly the QAT
module's output.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds import ops
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.quant.packing import padded_length
from xtc_ds.quant.reference import QuantizedWeight

__all__ = [
    "XtcPackedLinear",
    "packed_weight_tensors",
    "packed_shapes",
    "unpacked_codes",
    "register_packed_buffers",
]


def packed_weight_tensors(weight: torch.Tensor, spec: PackedSpec) -> dict[str, torch.Tensor]:
    """``packed_weight``, ``weight_scale`` (and ``weight_zero_point``) of a ``(out_features, in_features)`` weight."""
    quantized = spec.format.quantize(weight.detach().float(), spec.num_groups)
    bits = spec.format.storage_bits
    codes = quantized.codes
    padding = padded_length(spec.in_features, bits) - spec.in_features
    if padding:
        codes = F.pad(codes, (0, padding))
    tensors = {"packed_weight": ops.pack_bits(codes.contiguous(), bits), "weight_scale": quantized.weight_scale}
    if quantized.weight_zero_point is not None:
        tensors["weight_zero_point"] = quantized.weight_zero_point
    return tensors


def unpacked_codes(packed_weight: torch.Tensor, spec: PackedSpec) -> torch.Tensor:
    """uint8 codes ``(rows, in_features)`` of packed rows (padding dropped)."""
    return ops.unpack_bits(packed_weight, spec.format.storage_bits)[:, : spec.in_features]


def packed_shapes(spec: PackedSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor a packed module of ``spec`` holds (what a checkpoint must contain)."""
    bits = spec.format.storage_bits
    shapes = {
        "packed_weight": (spec.out_features, padded_length(spec.in_features, bits) * bits // 8),
        "weight_scale": (spec.num_groups,),
    }
    if spec.format.has_zero_point:
        shapes["weight_zero_point"] = (spec.num_groups,)
    return shapes


def register_packed_buffers(module: nn.Module, spec: PackedSpec, extra: dict[str, Optional[torch.Tensor]]) -> None:
    """Empty ``packed_weight``/``weight_scale``/``weight_zero_point`` buffers of ``spec``'s shapes, then ``extra``.

    Absent (None) buffers are registered last: ``torch.export`` (non-strict) miscounts buffers that follow a
    None one.
    """
    shapes = packed_shapes(spec)
    buffers: dict[str, Optional[torch.Tensor]] = {}
    for name in ("packed_weight", "weight_scale", "weight_zero_point"):
        dtype = torch.uint8 if name == "packed_weight" else torch.float32
        buffers[name] = torch.zeros(shapes[name], dtype=dtype) if name in shapes else None
    buffers.update(extra)
    for name in sorted(buffers, key=lambda name: buffers[name] is None):
        module.register_buffer(name, buffers[name])


class XtcPackedLinear(nn.Module):
    """Inference-only linear layer holding ``packed_weight`` (uint8), ``weight_scale`` and ``bias`` buffers.

    Build empty from a :class:`PackedSpec` (then ``load_state_dict``), or with :meth:`from_qat`.
    """

    def __init__(self, spec: PackedSpec) -> None:
        super().__init__()
        if spec.bits is None:
            raise ValueError("XtcPackedLinear needs a quantized weight (spec.bits is None)")
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        # The device's kernel layout of the weight: derived, so not saved; rebuilt when packed_weight changes.
        for name in ("kernel_weight", "row_sum", "row_scale"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        bias = torch.zeros(spec.out_features) if spec.bias else None
        register_packed_buffers(self, spec, {"bias": bias, "act_range": torch.zeros(2) if spec.act_static else None})
        self._kernel_source: Optional[tuple] = None

    @classmethod
    def from_qat(cls, module: nn.Module, spec: PackedSpec, weight: Optional[torch.Tensor] = None) -> XtcPackedLinear:
        """Quantize and pack ``module``'s weight (or ``weight``, in the module's layout, e.g. gathered)."""
        packed = cls(spec)
        weight = module.weight if weight is None else weight
        if spec.kind == "conv1d":
            weight = weight.t()
        with torch.no_grad():
            for name, tensor in packed_weight_tensors(weight, spec).items():
                setattr(packed, name, tensor)
            if spec.bias:
                packed.bias.copy_(module.bias.detach().float())
            quantizer = getattr(module, "act_quantizer", None)
            if spec.act_static and quantizer is not None:
                packed.act_range.copy_(torch.stack([quantizer.x_min, quantizer.x_max]).float())
        return packed

    def quantized_weight(self) -> QuantizedWeight:
        codes = unpacked_codes(self.packed_weight, self.spec)
        return QuantizedWeight(codes, self.weight_scale, self.weight_zero_point)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the QAT model used, ``(out_features, in_features)`` (reference path only)."""
        return self.spec.format.dequantize(self.quantized_weight())

    def uses_packed_linear(self) -> bool:
        """True when the forward runs ``ops.packed_linear`` (the spec fits its contract), else dequantize + matmul."""
        spec = self.spec
        return (
            spec.act_bits is not None
            and spec.act_symmetric
            and not spec.act_static
            and spec.format.kernel_layout is not None
            and spec.in_features % ops.TILE_INPUTS == 0
            and spec.out_features % ops.TILE_ROWS == 0
            and spec.out_features % spec.num_groups == 0
        )

    def _kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kernel_weight, row_sum = ops.prepack_weight(self.packed_weight, self.spec.bits, self.in_features)
        row_scale = self.weight_scale.repeat_interleave(self.out_features // self.spec.num_groups).contiguous()
        return kernel_weight, row_sum, row_scale

    def prepare_kernel(self) -> None:
        """(Re)build the kernel layout of ``packed_weight`` on its device; the forward calls this when stale.

        Call it before ``torch.compile``/``torch.export`` so the traced graph reads the prepared buffers instead
        of prepacking on every call.
        """
        self.kernel_weight, self.row_sum, self.row_scale = self._kernel_tensors()
        self._kernel_source = self._source_key()

    def _source_key(self) -> tuple:
        weight, scale = self.packed_weight, self.weight_scale
        return (weight.device, weight.data_ptr(), weight._version, scale.data_ptr(), scale._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.uses_packed_linear():
            if torch.compiler.is_compiling() or torch.compiler.is_exporting():
                prepared = self._kernel_source is not None
                kernel = (self.kernel_weight, self.row_sum, self.row_scale) if prepared else self._kernel_tensors()
            else:
                if self._kernel_source != self._source_key():
                    self.prepare_kernel()
                kernel = (self.kernel_weight, self.row_sum, self.row_scale)
            return ops.packed_linear(x, *kernel, self.bias, spec.bits, spec.act_bits)
        if spec.act_bits is not None:
            low, high = (self.act_range[0], self.act_range[1]) if spec.act_static else (None, None)
            x = ops.fake_quant_activation(x, spec.act_bits, spec.act_symmetric, low, high)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        spec = self.spec
        act = f", act_bits={spec.act_bits}" if spec.act_bits else ""
        return (
            f"in_features={spec.in_features}, out_features={spec.out_features}, bits={spec.bits}, "
            f"num_groups={spec.num_groups}{act}, bias={spec.bias}"
        )
