"""The weight formats: one object per way of storing a quantized weight, and the one place that knows them apart.

A format says what its codes mean and how they are made: the code alphabet and its ``code -> level`` map
(``level = level_step * code - level_offset``, or ``code - zero_point`` per group where the format has a zero
point), the code of 0, the bits a stored code takes, the reference quantizer (:meth:`WeightFormat.grid`), how
pruned weights are quantized (:meth:`WeightFormat.masked_values`) and stored compactly, and the tile layout of the
fused kernels (``None``: no native kernel; the reference path runs). The reference quantizer, the ops, the packed
modules, sparse codes and the ONNX mapping ask :func:`weight_format` instead of testing ``bits``.

=========  ======  =========  ====================  =========  ===========
format     bits    codes      level of code ``c``   code of 0  kernel
=========  ======  =========  ====================  =========  ===========
binary     1       0, 1       ``2c - 1``            none       sign bits
ternary    2       0, 1, 2    ``c - 1``             1          two masks
symmetric  3..8    1..2^b-1   ``c - 2^(b-1)``       2^(b-1)    int8
asymmetric 3..8    0..2^b-1   ``c - zero_point``    per group  none
=========  ======  =========  ====================  =========  ===========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from xtc_ds.quant.grids import (
    TERNARY_THRESHOLD,
    Grid,
    asymmetric_grid,
    binary_grid,
    grouped,
    symmetric_grid,
    ternary_grid,
)

__all__ = [
    "QuantizedWeight",
    "WeightFormat",
    "BINARY",
    "TERNARY",
    "weight_format",
    "register_weight_format",
    "storage_bits",
]


class QuantizedWeight(NamedTuple):
    """Integer codes and scales of a weight: what a packed checkpoint stores.

    ``codes`` is uint8 of the weight's shape; value = ``weight_scale[g] * level(code)`` with the format's level map.
    ``weight_scale`` is float32 ``(num_groups,)``; ``weight_zero_point`` is float32 ``(num_groups,)`` for formats
    with zero points, else None.
    """

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: Optional[torch.Tensor]


@dataclass(frozen=True)
class WeightFormat:
    """How one kind of quantized weight is coded (module docstring).

    Attributes:
        name: ``binary``, ``ternary``, ``symmetric``, ``asymmetric``, or a registered format's own name.
        bits: the config's bits.
        storage_bits: bits per stored code (1, 2, 4 or 8: codes never straddle a byte).
        level_offset: ``level = level_step * code - level_offset``; None where each group has a zero point.
        level_step: see ``level_offset``.
        extreme: binary or ternary (XTC's extreme formats): symmetric by definition, rounded by sign or threshold
            rather than a step, scaled by mean magnitudes.
        kernel_layout: the fused kernels' tile layout of the levels, or None where no native kernel exists.
    """

    name: str
    bits: int
    storage_bits: int
    level_offset: Optional[int]
    level_step: int = 1
    extreme: bool = False
    kernel_layout: Optional[str] = None

    @property
    def has_zero_point(self) -> bool:
        return self.level_offset is None

    @property
    def single_bit(self) -> bool:
        """Codes are single bits (the packed bytes are the whole weight)."""
        return self.storage_bits == 1

    @property
    def zero_code(self) -> Optional[int]:
        """The code of level 0, or None where no code is 0 (binary) or it varies by group (zero points)."""
        if self.level_offset is None or self.level_offset % self.level_step:
            return None
        return self.level_offset // self.level_step

    @property
    def pruned_bits(self) -> int:
        """The bits of the format a sparse-pruned weight of this format is stored in (pruning adds the level 0)."""
        return self.bits

    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        """The reference quantizer: codes and a scale per row of float32 ``rows`` (one row per scale group)."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor, num_groups: int, stochastic: bool = False) -> QuantizedWeight:
        """Codes and scales (and zero points) of ``weight`` (any shape) per contiguous group: :meth:`grid`."""
        grid = self.grid(grouped(weight, num_groups), stochastic)
        zero_point = grid.offset.reshape(num_groups) if isinstance(grid.offset, torch.Tensor) else None
        return QuantizedWeight(
            grid.codes.to(torch.uint8).reshape(weight.shape), grid.scale.reshape(num_groups), zero_point
        )

    def dequantize(self, quantized: QuantizedWeight) -> torch.Tensor:
        """float32 weight of ``quantized.codes``' shape: the inverse of :meth:`quantize` (same grid)."""
        num_groups = quantized.weight_scale.numel()
        codes = quantized.codes.reshape(num_groups, -1).float()
        scale = quantized.weight_scale.reshape(num_groups, 1).float()
        zero_point = quantized.weight_zero_point
        if (zero_point is None) != (self.level_offset is not None):
            raise ValueError(f"{self.name} weights {'have' if self.has_zero_point else 'have no'} zero points")
        offset = float(self.level_offset) if zero_point is None else zero_point.reshape(num_groups, 1).float()
        grid = Grid(codes, scale, offset, step=float(self.level_step))
        return grid.values().reshape(quantized.codes.shape)

    def levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Signed int32 levels of codes (formats without zero points)."""
        if self.level_offset is None:
            raise ValueError(f"{self.name} codes have a level only with their group's zero point")
        return codes.to(torch.int32) * self.level_step - self.level_offset

    def codes_of_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`levels` (int32)."""
        if self.level_offset is None:
            raise ValueError(f"{self.name} codes have a level only with their group's zero point")
        return torch.div(levels.to(torch.int32) + self.level_offset, self.level_step, rounding_mode="floor")

    def masked_values(self, rows: torch.Tensor, kept: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """Quantized values of the kept weights of ``rows`` (float32, one row per group), zeros elsewhere.

        The grid of ``rows * kept``: zeros move neither ``max|w|`` nor an asymmetric range (which always contains
        0), and quantize to exactly 0.
        """
        return self.grid(rows * kept, stochastic).values() * kept

    @property
    def sparse_value_bits(self) -> int:
        """Bits per value of :meth:`sparse_values`."""
        return self.storage_bits

    def sparse_values(self, codes: torch.Tensor) -> torch.Tensor:
        """The nonzero weights' ``codes`` as a sparse export stores them (:attr:`sparse_value_bits` each)."""
        return codes

    def codes_of_sparse_values(self, values: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`sparse_values`."""
        return values


def _masked_mean(magnitude: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    count = kept.sum(dim=1, keepdim=True).clamp_min(1)
    return (magnitude.sum(dim=1, keepdim=True, dtype=torch.float64) / count).float()


@dataclass(frozen=True)
class _Binary(WeightFormat):
    @property
    def pruned_bits(self) -> int:
        """-alpha, 0, +alpha: a sparse binary weight is stored as ternary codes."""
        return TERNARY_BITS

    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        return binary_grid(rows)

    def masked_values(self, rows: torch.Tensor, kept: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """``sign(w) * mean_kept|w|`` per group on the kept weights."""
        return torch.where(rows >= 0, 1.0, -1.0) * kept * _masked_mean(rows.abs() * kept, kept)


@dataclass(frozen=True)
class _Ternary(WeightFormat):
    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        return ternary_grid(rows)

    def masked_values(self, rows: torch.Tensor, kept: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """Threshold ``0.7 * mean_kept|w|``, scale the mean kept ``|w|`` above it."""
        magnitude = rows.abs() * kept
        chosen = (magnitude > TERNARY_THRESHOLD * _masked_mean(magnitude, kept)) & kept
        scale = (magnitude * chosen).sum(dim=1, keepdim=True, dtype=torch.float64) / chosen.sum(1, True).clamp_min(1)
        return torch.sign(rows) * chosen * scale.float()

    @property
    def sparse_value_bits(self) -> int:
        """Nonzero ternary codes are 0 (-1) and 2 (+1): one bit each."""
        return 1

    def sparse_values(self, codes: torch.Tensor) -> torch.Tensor:
        return codes // 2

    def codes_of_sparse_values(self, values: torch.Tensor) -> torch.Tensor:
        return values * 2


@dataclass(frozen=True)
class _Symmetric(WeightFormat):
    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        return symmetric_grid(rows, self.bits, stochastic)


@dataclass(frozen=True)
class _Asymmetric(WeightFormat):
    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        return asymmetric_grid(rows, self.bits, stochastic)


TERNARY_BITS = 2
BINARY = _Binary("binary", 1, 1, level_offset=1, level_step=2, extreme=True, kernel_layout="sign_bits")
TERNARY = _Ternary("ternary", TERNARY_BITS, 2, level_offset=1, extreme=True, kernel_layout="ternary_masks")
_UNIFORM_STORAGE = {bits: 4 if bits <= 4 else 8 for bits in range(3, 9)}
_SYMMETRIC = {
    bits: _Symmetric("symmetric", bits, storage, level_offset=2 ** (bits - 1), kernel_layout="int8")
    for bits, storage in _UNIFORM_STORAGE.items()
}
_ASYMMETRIC = {
    bits: _Asymmetric("asymmetric", bits, storage, level_offset=None) for bits, storage in _UNIFORM_STORAGE.items()
}


_BUILT_IN = ("binary", "ternary", "symmetric", "asymmetric")
_REGISTERED: dict[str, WeightFormat] = {}


def register_weight_format(form: WeightFormat) -> WeightFormat:
    """Make ``form`` selectable by its name: a config group's ``params.format`` and a packed folder's module specs
    name it. A new format subclasses :class:`WeightFormat` (at least :meth:`WeightFormat.grid`); with
    ``kernel_layout=None`` QAT, packing and loading run the reference path (``docs/ARCHITECTURE.md``).

    Raises:
        ValueError: the name is a built-in format's, or another format holds it.
    """
    if form.name in _BUILT_IN:
        raise ValueError(f"weight format {form.name!r} is built in; register a format under another name")
    if _REGISTERED.setdefault(form.name, form) != form:
        raise ValueError(f"weight format {form.name!r} is already registered as {_REGISTERED[form.name]!r}")
    return form


def weight_format(bits: int, symmetric: bool = True, name: Optional[str] = None) -> WeightFormat:
    """The format of ``bits``-bit weights: binary (1), ternary (2), symmetric or asymmetric uniform (3..8), or the
    registered format ``name`` (:func:`register_weight_format`).

    ``symmetric`` only chooses between the uniform grids; the extreme formats are symmetric by definition.

    Raises:
        ValueError: ``bits`` outside 1..8, a format ``name`` nobody registered, or one of other bits.
    """
    if name is not None:
        form = _REGISTERED.get(name)
        if form is None:
            known = ", ".join(sorted(_REGISTERED)) or "none"
            raise ValueError(
                f"weight format {name!r} is not registered (registered: {known}); import the code that calls "
                "xtc_ds.quant.formats.register_weight_format for it first"
            )
        if form.bits != bits:
            raise ValueError(f"weight format {name!r} has {form.bits}-bit codes, not {bits}")
        return form
    if bits == BINARY.bits:
        return BINARY
    if bits == TERNARY.bits:
        return TERNARY
    formats = _SYMMETRIC if symmetric else _ASYMMETRIC
    if bits not in formats:
        raise ValueError(f"bits must be 1..8, got {bits}")
    return formats[bits]


def storage_bits(bits: int) -> int:
    """Bits per stored code of ``bits``-bit weights: 1 and 2 as they are, 3..4 in nibbles, 5..8 in bytes."""
    return weight_format(bits).storage_bits
