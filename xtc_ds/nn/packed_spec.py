"""What a packed module is: the per-module facts a packed checkpoint records in its ``quantization_config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["PackedSpec", "MODULE_KINDS"]

MODULE_KINDS = ("linear", "conv1d", "embedding")


@dataclass(frozen=True)
class PackedSpec:
    """One compressed module of an exported model.

    Attributes:
        kind: ``linear``, ``conv1d`` (transformers' GPT-2 layer; stored like a linear) or ``embedding``.
        out_features, in_features: the weight as ``(out_features, in_features)``; for an embedding
            ``(num_embeddings, embedding_dim)``.
        bias: whether the module has a bias.
        bits: weight bits (1 binary, 2 ternary, 3..8 uniform), or None for a module that only quantizes its input.
        num_groups: weight scales (contiguous row-major groups); ``out_features`` means one per row.
        symmetric: 3..8-bit weights without zero point.
        group: the config's weight group name (for size reports).
        act_bits: input activation bits, or None.
        act_symmetric, act_static: the activation quantizer's grid and range mode (static ranges are stored
            as the module's ``act_range`` tensor ``[min, max]``).
        padding_idx: an embedding's padding index.
    """

    kind: str
    out_features: int
    in_features: int
    bias: bool = False
    bits: Optional[int] = None
    num_groups: int = 1
    symmetric: bool = True
    group: Optional[str] = None
    act_bits: Optional[int] = None
    act_symmetric: bool = True
    act_static: bool = False
    padding_idx: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in MODULE_KINDS:
            raise ValueError(f"kind must be one of {MODULE_KINDS}, got {self.kind!r}")
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be 1..8 or None, got {self.bits}")
        if self.num_groups < 1 or (self.out_features * self.in_features) % self.num_groups:
            raise ValueError(
                f"num_groups={self.num_groups} does not split a {self.out_features}x{self.in_features} weight"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackedSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        return cls(**data)
