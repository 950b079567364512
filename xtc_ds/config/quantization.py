"""``weight_quantization`` and ``activation_quantization``: XTC's 1/2-bit weights and 8-bit activations."""

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from xtc_ds._schema import ConfigError
from xtc_ds.config.base import PER_ROW, Checked, GroupConfig, QuantizationType, RangeCalibration, Rounding, require
from xtc_ds.quant.formats import WeightFormat, weight_format

__all__ = [
    "WeightQuantParams",
    "WeightQuantGroupConfig",
    "ActivationQuantParams",
    "ActivationQuantGroupConfig",
    "Fp16MixedQuantizeConfig",
    "WeightQuantSharedConfig",
    "WeightQuantizationConfig",
    "ActivationQuantSharedConfig",
    "ActivationQuantizationConfig",
]


@dataclass(frozen=True, kw_only=True)
class WeightQuantParams(Checked):
    """``format`` (xtc_ds only): the name of a registered weight format
    (:func:`xtc_ds.quant.formats.register_weight_format`) instead of the built-in format of ``target_bits``; it has
    no bit schedule, so both bits must be its bits."""

    start_bits: int
    target_bits: int
    quantization_period: int = 1
    format: Optional[str] = None

    @property
    def target_format(self) -> WeightFormat:
        """The weight format at ``target_bits`` (its kind: whether it is extreme, how pruning stores it; a uniform
        grid's symmetry is the shared parameters' ``quantization_type``, which a group does not know)."""
        return weight_format(self.target_bits, name=self.format)

    def _check(self, path: str) -> None:
        require(1 <= self.start_bits <= 8, f"{path}.start_bits", self.start_bits, "must be 1..8")
        require(1 <= self.target_bits <= 8, f"{path}.target_bits", self.target_bits, "must be 1..8")
        require(
            self.start_bits >= self.target_bits,
            f"{path}.start_bits",
            self.start_bits,
            f"must be >= target_bits ({self.target_bits}); bits only step down",
        )
        require(self.quantization_period >= 0, f"{path}.quantization_period", self.quantization_period, "must be >= 0")
        if self.format is not None:
            try:
                weight_format(self.target_bits, name=self.format)
            except ValueError as err:
                raise ConfigError(f"{path}.format: {err}") from None
            require(
                self.start_bits == self.target_bits,
                f"{path}.start_bits",
                self.start_bits,
                f"must equal target_bits ({self.target_bits}): the format {self.format!r} has no bit schedule",
            )


@dataclass(frozen=True, kw_only=True)
class WeightQuantGroupConfig(GroupConfig):
    params: WeightQuantParams


@dataclass(frozen=True, kw_only=True)
class ActivationQuantParams(Checked):
    bits: int

    def _check(self, path: str) -> None:
        require(self.bits in (4, 8), f"{path}.bits", self.bits, "must be 4 or 8")


@dataclass(frozen=True, kw_only=True)
class ActivationQuantGroupConfig(GroupConfig):
    params: ActivationQuantParams


@dataclass(frozen=True, kw_only=True)
class Fp16MixedQuantizeConfig(Checked):
    """Blend ``r * W + (1 - r) * Q(W)``; ``r`` starts at 1 and drops by ``quantize_change_ratio`` per step."""

    enabled: bool = False
    quantize_change_ratio: float = 0.001

    def _check(self, path: str) -> None:
        ratio = self.quantize_change_ratio
        require(0.0 < ratio <= 1.0, f"{path}.quantize_change_ratio", ratio, "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class WeightQuantSharedConfig(Checked):
    enabled: bool = False
    quantizer_kernel: bool = False
    schedule_offset: int = 0
    quantize_groups: Union[int, Literal["per_row"]] = 1
    quantize_verbose: bool = False
    quantization_type: QuantizationType = QuantizationType.SYMMETRIC
    quantize_weight_in_forward: bool = False
    rounding: Rounding = Rounding.NEAREST
    fp16_mixed_quantize: Fp16MixedQuantizeConfig = field(default_factory=Fp16MixedQuantizeConfig)

    def _check(self, path: str) -> None:
        require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")
        groups = self.quantize_groups
        require(groups == PER_ROW or groups >= 1, f"{path}.quantize_groups", groups, "must be >= 1 or 'per_row'")


@dataclass(frozen=True, kw_only=True)
class WeightQuantizationConfig(Checked):
    shared_parameters: WeightQuantSharedConfig = field(default_factory=WeightQuantSharedConfig)
    different_groups: dict[str, WeightQuantGroupConfig] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.shared_parameters.enabled

    def _check(self, path: str) -> None:
        shared = self.shared_parameters
        if shared.enabled and not self.different_groups:
            raise ConfigError(f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)")
        low_bit = sorted(name for name, g in self.different_groups.items() if g.params.target_format.extreme)
        if low_bit and shared.quantization_type is not QuantizationType.SYMMETRIC:
            raise ConfigError(
                f"{path}.shared_parameters.quantization_type: {shared.quantization_type.value!r} "
                f"(1- and 2-bit groups {low_bit} are symmetric by definition; use 'symmetric')"
            )
        if low_bit and shared.rounding is not Rounding.NEAREST:
            raise ConfigError(
                f"{path}.shared_parameters.rounding: {shared.rounding.value!r} "
                f"(1- and 2-bit groups {low_bit} have no rounding step; use 'nearest')"
            )


@dataclass(frozen=True, kw_only=True)
class ActivationQuantSharedConfig(Checked):
    enabled: bool = False
    quantization_type: QuantizationType = QuantizationType.SYMMETRIC
    range_calibration: RangeCalibration = RangeCalibration.DYNAMIC
    schedule_offset: int = 1000

    def _check(self, path: str) -> None:
        require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class ActivationQuantizationConfig(Checked):
    shared_parameters: ActivationQuantSharedConfig = field(default_factory=ActivationQuantSharedConfig)
    different_groups: dict[str, ActivationQuantGroupConfig] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.shared_parameters.enabled

    def _check(self, path: str) -> None:
        if self.shared_parameters.enabled and not self.different_groups:
            raise ConfigError(f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)")
