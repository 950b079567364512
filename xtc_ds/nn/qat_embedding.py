"""QAT version of ``nn.Embedding`` that reuses the original Parameter."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds.nn.fake_quant import WeightFakeQuantizer

__all__ = ["XtcQATEmbedding"]

_EMBEDDING_ATTRS = (
    "num_embeddings",
    "embedding_dim",
    "padding_idx",
    "max_norm",
    "norm_type",
    "scale_grad_by_freq",
    "sparse",
)


class XtcQATEmbedding(nn.Embedding):
    """``nn.Embedding`` with per-token weight fake quantization.

    Scales are per token (row), as in the legacy library, so quantizing the looked-up rows equals looking
    up rows of the quantized table: the forward quantizes only the rows a batch uses (a few thousand
    instead of the 30k-row vocabulary).
    """

    weight_quantizer: Optional[WeightFakeQuantizer]

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, weight_quantizer: Optional[WeightFakeQuantizer] = None
    ) -> XtcQATEmbedding:
        """Wrap ``embedding``, sharing its ``weight`` Parameter."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in _EMBEDDING_ATTRS:
            setattr(new, name, getattr(embedding, name))
        new.weight = embedding.weight
        new.weight_quantizer = weight_quantizer
        new.act_quantizer = None
        return new.train(embedding.training)

    def quantized_weight(self) -> torch.Tensor:
        """The whole table as the forward pass sees it, shape (num_embeddings, embedding_dim)."""
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        if self.weight_quantizer is None:
            return rows
        flat = rows.reshape(-1, self.embedding_dim)
        # A copy, not a view of the quantizer's output: models add position embeddings to this in place
        # (DeBERTa-v2 in transformers 4.x), which autograd forbids on views of a custom Function's output.
        return self.weight_quantizer(flat).reshape(rows.shape).clone()

    def to_embedding(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` with the same Parameter."""
        plain = nn.Embedding.__new__(nn.Embedding)
        nn.Module.__init__(plain)
        for name in _EMBEDDING_ATTRS:
            setattr(plain, name, getattr(self, name))
        plain.weight = self.weight
        return plain.train(self.training)
