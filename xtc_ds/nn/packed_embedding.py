"""XtcPackedEmbedding: an embedding table that stays packed; a lookup unpacks only the rows it returns."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from xtc_ds.nn.packed_linear import packed_weight_tensors, register_packed_buffers, unpacked_codes
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.quant.formats import QuantizedWeight

__all__ = ["XtcPackedEmbedding"]


class XtcPackedEmbedding(nn.Module):
    """Per-row quantized embedding (one scale per token, as XTC trains it) with ``packed_weight`` rows.

    A lookup gathers the packed rows and their scales and dequantizes just those, which equals indexing the
    QAT module's quantized table.
    """

    def __init__(self, spec: PackedSpec) -> None:
        super().__init__()
        if spec.bits is None or spec.num_groups != spec.out_features:
            raise ValueError("XtcPackedEmbedding needs quantized rows with one scale per row")
        self.spec = spec
        self.num_embeddings, self.embedding_dim = spec.out_features, spec.in_features
        self.padding_idx = spec.padding_idx
        register_packed_buffers(self, spec, {})

    @classmethod
    def from_qat(
        cls, module: nn.Module, spec: PackedSpec, weight: Optional[torch.Tensor] = None
    ) -> XtcPackedEmbedding:
        """Quantize and pack ``module``'s table (or ``weight``, e.g. gathered from ZeRO-3 partitions)."""
        packed = cls(spec)
        with torch.no_grad():
            for name, tensor in packed_weight_tensors(module.weight if weight is None else weight, spec).items():
                setattr(packed, name, tensor)
        return packed

    def quantized_weight(self) -> QuantizedWeight:
        """Codes and per-row scales of the whole table."""
        return QuantizedWeight(
            unpacked_codes(self.packed_weight, self.spec), self.weight_scale, self.weight_zero_point
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        flat = input.reshape(-1)
        codes = unpacked_codes(self.packed_weight[flat], self.spec)
        zero_point = None if self.weight_zero_point is None else self.weight_zero_point[flat]
        rows = self.spec.format.dequantize(QuantizedWeight(codes, self.weight_scale[flat], zero_point))
        return rows.reshape(*input.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.spec.bits}, padding_idx={self.padding_idx}"
