"""What a packed module is: the per-module facts a packed checkpoint records in its ``quantization_config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from xtc_ds.quant.formats import WeightFormat, weight_format

__all__ = ["PackedSpec", "MODULE_KINDS"]

MODULE_KINDS = ("linear", "conv1d", "embedding")


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true/false are bools, which Python would accept as 1/0


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
        weight_format: a registered weight format's name (:func:`xtc_ds.quant.formats.register_weight_format`), or
            None for the built-in format of ``bits``.
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
    weight_format: Optional[str] = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(problem)

    def _problem(self) -> Optional[str]:
        """What makes this spec impossible for the format (types included: it is read from JSON), or None."""
        flags = ("bias", "symmetric", "act_symmetric", "act_static")
        if self.kind not in MODULE_KINDS:
            return f"kind must be one of {MODULE_KINDS}, got {self.kind!r}"
        if not all(_is_int(v) and v >= 1 for v in (self.out_features, self.in_features)):
            return (
                f"out_features and in_features must be integers >= 1, got {self.out_features!r}, {self.in_features!r}"
            )
        if not all(isinstance(getattr(self, name), bool) for name in flags):
            return f"{', '.join(flags)} must be true or false"
        if self.bits is not None and not (_is_int(self.bits) and 1 <= self.bits <= 8):
            return f"bits must be 1..8 or null, got {self.bits!r}"
        if self.act_bits is not None and (not _is_int(self.act_bits) or self.act_bits not in (4, 8)):
            return f"act_bits must be 4, 8 or null, got {self.act_bits!r}"
        if self.bits is None and self.act_bits is None:
            return "neither bits nor act_bits is set (nothing is quantized)"
        if self.act_static and self.act_bits is None:
            return "act_static needs act_bits"
        if self.group is not None and not isinstance(self.group, str):
            return f"group must be a string or null, got {self.group!r}"
        numel = self.out_features * self.in_features
        if not _is_int(self.num_groups) or self.num_groups < 1 or numel % self.num_groups:
            return f"num_groups={self.num_groups!r} does not split a {self.out_features}x{self.in_features} weight"
        if self.bits is not None and not self.symmetric and weight_format(self.bits).extreme:
            return f"{self.bits}-bit weights are symmetric by definition"
        if self.weight_format is not None:
            if self.bits is None or not isinstance(self.weight_format, str):
                return f"weight_format {self.weight_format!r} needs bits and must be a format's name"
            try:
                weight_format(self.bits, self.symmetric, self.weight_format)
            except ValueError as err:
                return str(err)
        if self.kind == "embedding":
            if self.act_bits is not None or self.num_groups != self.out_features:
                return "an embedding has one scale per row and no activation quantization"
            if self.padding_idx is not None and not (
                _is_int(self.padding_idx) and 0 <= self.padding_idx < self.out_features
            ):
                return f"padding_idx {self.padding_idx!r} is not a row of the embedding"
        elif self.padding_idx is not None:
            return "padding_idx is for embeddings only"
        return None

    @property
    def format(self) -> WeightFormat:
        """The weight's format (:mod:`xtc_ds.quant.formats`); ValueError for a module without quantized weights."""
        if self.bits is None:
            raise ValueError("this module quantizes only its input; its weight has no format")
        return weight_format(self.bits, self.symmetric, self.weight_format)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values; ``weight_format`` only where a registered format is used (so a built-in
        format's spec reads as it did before formats could be registered)."""
        data = dataclasses.asdict(self)
        if data["weight_format"] is None:
            del data["weight_format"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackedSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        return cls(**data)
