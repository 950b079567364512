"""The ``compression_training`` section: the legacy DeepSpeed schema (0.7-0.18) plus ``knowledge_distillation``.

Parsed once into frozen dataclasses; no other module reads the raw dict. JSON keys are the field names
exactly, so every legacy config loads unchanged. Defaults are the legacy *code* defaults (not the
legacy docs, which disagreed with the code in several places; see README).
"""

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Optional, Union

from xtc_ds._schema import ConfigError, from_json, to_json

__all__ = [
    "ConfigError",
    "QuantizationType",
    "Rounding",
    "RangeCalibration",
    "PruningMethod",
    "WeightQuantizationConfig",
    "ActivationQuantizationConfig",
    "LayerReductionConfig",
    "DistillationConfig",
    "CompressionConfig",
    "load_compression_config",
    "load_deepspeed_config",
    "split_deepspeed_config",
    "has_section",
    "SECTION",
]

SECTION = "compression_training"
PER_ROW = "per_row"


class QuantizationType(str, Enum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class Rounding(str, Enum):
    NEAREST = "nearest"
    STOCHASTIC = "stochastic"


class RangeCalibration(str, Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class PruningMethod(str, Enum):
    L1 = "l1"
    TOPK = "topk"
    SNIP_MOMENTUM = "snip_momentum"


class _Checked:
    """Base of every schema dataclass: ``_check(path)`` validates the object's own values."""

    def _check(self, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path`` if a value is out of range."""


def _require(ok: bool, path: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {value!r} ({rule})")


def _validate_tree(obj: Any, path: str) -> None:
    if isinstance(obj, _Checked):
        for f in dataclasses.fields(obj):
            _validate_tree(getattr(obj, f.name), f"{path}.{f.name}")
        obj._check(path)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _validate_tree(item, f"{path}.{key}")


# ----------------------------------------------------------------------------------------------- groups


@dataclass(frozen=True, kw_only=True)
class _GroupConfig(_Checked):
    """Scope of one group: ``modules`` regexes (``re.search`` on module names); ``"*"`` means all eligible."""

    modules: tuple[str, ...] = ("*",)
    related_modules: Optional[tuple[tuple[str, ...], ...]] = None

    def _check(self, path: str) -> None:
        _require(len(self.modules) > 0, f"{path}.modules", list(self.modules), "must list at least one pattern")
        patterns = [(f"{path}.modules[{i}]", p) for i, p in enumerate(self.modules)]
        for i, related in enumerate(self.related_modules or ()):
            patterns += [(f"{path}.related_modules[{i}][{j}]", p) for j, p in enumerate(related)]
        for where, pattern in patterns:
            if pattern == "*":
                continue
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"{where}: {pattern!r} (invalid regular expression: {err})") from None


@dataclass(frozen=True, kw_only=True)
class WeightQuantParams(_Checked):
    start_bits: int
    target_bits: int
    quantization_period: int = 1

    def _check(self, path: str) -> None:
        _require(1 <= self.start_bits <= 8, f"{path}.start_bits", self.start_bits, "must be 1..8")
        _require(1 <= self.target_bits <= 8, f"{path}.target_bits", self.target_bits, "must be 1..8")
        _require(
            self.start_bits >= self.target_bits,
            f"{path}.start_bits",
            self.start_bits,
            f"must be >= target_bits ({self.target_bits}); bits only step down",
        )
        _require(
            self.quantization_period >= 0, f"{path}.quantization_period", self.quantization_period, "must be >= 0"
        )


@dataclass(frozen=True, kw_only=True)
class WeightQuantGroupConfig(_GroupConfig):
    params: WeightQuantParams


@dataclass(frozen=True, kw_only=True)
class ActivationQuantParams(_Checked):
    bits: int

    def _check(self, path: str) -> None:
        _require(self.bits in (4, 8), f"{path}.bits", self.bits, "must be 4 or 8")


@dataclass(frozen=True, kw_only=True)
class ActivationQuantGroupConfig(_GroupConfig):
    params: ActivationQuantParams


@dataclass(frozen=True, kw_only=True)
class PruningParams(_Checked):
    dense_ratio: float

    def _check(self, path: str) -> None:
        _require(0.0 < self.dense_ratio <= 1.0, f"{path}.dense_ratio", self.dense_ratio, "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class PruningGroupConfig(_GroupConfig):
    params: PruningParams


# ----------------------------------------------------------------------------------------------- quantization


@dataclass(frozen=True, kw_only=True)
class Fp16MixedQuantizeConfig(_Checked):
    """Blend ``r * W + (1 - r) * Q(W)``; ``r`` starts at 1 and drops by ``quantize_change_ratio`` per step."""

    enabled: bool = False
    quantize_change_ratio: float = 0.001

    def _check(self, path: str) -> None:
        ratio = self.quantize_change_ratio
        _require(0.0 < ratio <= 1.0, f"{path}.quantize_change_ratio", ratio, "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class WeightQuantSharedConfig(_Checked):
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
        _require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")
        groups = self.quantize_groups
        _require(groups == PER_ROW or groups >= 1, f"{path}.quantize_groups", groups, "must be >= 1 or 'per_row'")


@dataclass(frozen=True, kw_only=True)
class WeightQuantizationConfig(_Checked):
    shared_parameters: WeightQuantSharedConfig = field(default_factory=WeightQuantSharedConfig)
    different_groups: dict[str, WeightQuantGroupConfig] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.shared_parameters.enabled

    def _check(self, path: str) -> None:
        shared = self.shared_parameters
        if shared.enabled and not self.different_groups:
            raise ConfigError(f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)")
        low_bit = sorted(name for name, g in self.different_groups.items() if g.params.target_bits <= 2)
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
class ActivationQuantSharedConfig(_Checked):
    enabled: bool = False
    quantization_type: QuantizationType = QuantizationType.SYMMETRIC
    range_calibration: RangeCalibration = RangeCalibration.DYNAMIC
    schedule_offset: int = 1000

    def _check(self, path: str) -> None:
        _require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class ActivationQuantizationConfig(_Checked):
    shared_parameters: ActivationQuantSharedConfig = field(default_factory=ActivationQuantSharedConfig)
    different_groups: dict[str, ActivationQuantGroupConfig] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.shared_parameters.enabled

    def _check(self, path: str) -> None:
        if self.shared_parameters.enabled and not self.different_groups:
            raise ConfigError(f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)")


# ----------------------------------------------------------------------------------------------- pruning


@dataclass(frozen=True, kw_only=True)
class _PruningSharedConfig(_Checked):
    enabled: bool = False
    schedule_offset: int = 1000
    method: PruningMethod = PruningMethod.L1
    _methods = (PruningMethod.L1, PruningMethod.TOPK)

    def _check(self, path: str) -> None:
        _require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")
        allowed = [m.value for m in self._methods]
        _require(self.method in self._methods, f"{path}.method", self.method.value, f"must be one of {allowed}")


@dataclass(frozen=True, kw_only=True)
class SparsePruningSharedConfig(_PruningSharedConfig):
    schedule_offset_end: Optional[int] = None
    schedule_offset_stride: int = 1
    block_pattern: str = "4x1"
    dense_ratio: float = 0.1
    excluded_modules: tuple[str, ...] = ()
    _methods = tuple(PruningMethod)

    def _check(self, path: str) -> None:
        super()._check(path)
        end = self.schedule_offset_end
        _require(
            end is None or end >= self.schedule_offset,
            f"{path}.schedule_offset_end",
            end,
            "must be >= schedule_offset",
        )
        stride = self.schedule_offset_stride
        _require(stride >= 1, f"{path}.schedule_offset_stride", stride, "must be >= 1")
        _require(0.0 < self.dense_ratio < 1.0, f"{path}.dense_ratio", self.dense_ratio, "must be in (0, 1)")
        pattern_ok = re.fullmatch(r"\d+x\d+", self.block_pattern) is not None
        _require(pattern_ok, f"{path}.block_pattern", self.block_pattern, "must look like '4x1'")


@dataclass(frozen=True, kw_only=True)
class RowPruningSharedConfig(_PruningSharedConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class HeadPruningSharedConfig(_PruningSharedConfig):
    method: PruningMethod = PruningMethod.TOPK
    num_heads: Optional[int] = None
    _methods = (PruningMethod.TOPK,)

    def _check(self, path: str) -> None:
        super()._check(path)
        if self.enabled or self.num_heads is not None:
            _require(
                self.num_heads is not None and self.num_heads >= 1,
                f"{path}.num_heads",
                self.num_heads,
                "must be an integer >= 1 when head pruning is enabled",
            )


@dataclass(frozen=True, kw_only=True)
class ChannelPruningSharedConfig(_PruningSharedConfig):
    pass


def _pruning_section(shared_cls: type) -> type:
    @dataclass(frozen=True, kw_only=True)
    class _Section(_Checked):
        shared_parameters: shared_cls = field(default_factory=shared_cls)  # type: ignore[valid-type]
        different_groups: dict[str, PruningGroupConfig] = field(default_factory=dict)

        @property
        def enabled(self) -> bool:
            return self.shared_parameters.enabled

        def _check(self, path: str) -> None:
            if not self.enabled:
                return
            method = self.shared_parameters.method
            if not self.different_groups and method is not PruningMethod.SNIP_MOMENTUM:
                raise ConfigError(
                    f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)"
                )
            technique = path.rsplit(".", 1)[-1]
            raise ConfigError(
                f"{path}.shared_parameters.enabled: True ({technique} is parsed and validated but not implemented "
                "in xtc_ds yet; set it to false)"
            )

    _Section.__name__ = _Section.__qualname__ = shared_cls.__name__.replace("SharedConfig", "Config")
    return _Section


SparsePruningConfig = _pruning_section(SparsePruningSharedConfig)
RowPruningConfig = _pruning_section(RowPruningSharedConfig)
HeadPruningConfig = _pruning_section(HeadPruningSharedConfig)
ChannelPruningConfig = _pruning_section(ChannelPruningSharedConfig)


# ----------------------------------------------------------------------------------------------- layers and KD


@dataclass(frozen=True, kw_only=True)
class LayerReductionConfig(_Checked):
    """Student layer ``i`` is initialized from teacher layer ``teacher_layer[i]`` under ``module_name_prefix``."""

    enabled: bool = False
    keep_number_layer: Optional[int] = None
    module_name_prefix: Optional[str] = None
    teacher_layer: tuple[int, ...] = ()
    other_module_name: tuple[str, ...] = ()

    def _check(self, path: str) -> None:
        if not self.enabled:
            return
        _require(
            bool(self.module_name_prefix),
            f"{path}.module_name_prefix",
            self.module_name_prefix,
            "required when layer_reduction is enabled, e.g. 'bert.encoder.layer'",
        )
        _require(
            len(self.teacher_layer) > 0,
            f"{path}.teacher_layer",
            list(self.teacher_layer),
            "must list at least one teacher layer index",
        )
        for i, index in enumerate(self.teacher_layer):
            _require(index >= 0, f"{path}.teacher_layer[{i}]", index, "must be >= 0")
        _require(
            len(set(self.teacher_layer)) == len(self.teacher_layer),
            f"{path}.teacher_layer",
            list(self.teacher_layer),
            "indices must be unique",
        )
        keep = self.keep_number_layer
        _require(
            keep is None or keep == len(self.teacher_layer),
            f"{path}.keep_number_layer",
            keep,
            f"must equal the number of teacher_layer entries ({len(self.teacher_layer)})",
        )


_TEMPERATURE_RANGE = (0.01, 100.0)  # beyond it the soft targets under/overflow (T**2 scaling, division by T)
_MAX_KD_WEIGHT = 1e4  # a larger weight only turns a finite loss into inf


@dataclass(frozen=True, kw_only=True)
class DistillationConfig(_Checked):
    """One-stage KD (XTC): soft cross-entropy on logits plus MSE on hidden states and attention maps.

    ``hidden_layer_map[j]`` is the teacher ``hidden_states`` index matched to student ``hidden_states[j]``;
    ``attention_layer_map[i]`` the teacher layer matched to student layer ``i``. Unset maps are derived from
    ``layer_reduction.teacher_layer`` (identity without layer reduction). ``teacher_zero3`` partitions the
    frozen teacher's parameters over the data-parallel ranks (ZeRO-3, gathered layer by layer in its forward)
    for teachers too large to replicate on every device.
    """

    enabled: bool = False
    teacher_zero3: bool = False
    temperature: float = 1.0
    logits_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    hidden_layer_map: Optional[tuple[int, ...]] = None
    attention_layer_map: Optional[tuple[int, ...]] = None

    def _check(self, path: str) -> None:
        low, high = _TEMPERATURE_RANGE
        _require(
            low <= self.temperature <= high, f"{path}.temperature", self.temperature, f"must be in [{low}, {high}]"
        )
        for name in ("logits_weight", "hidden_weight", "attention_weight"):
            weight = getattr(self, name)
            _require(0 <= weight <= _MAX_KD_WEIGHT, f"{path}.{name}", weight, f"must be in [0, {_MAX_KD_WEIGHT:g}]")
        for name in ("hidden_layer_map", "attention_layer_map"):
            for i, index in enumerate(getattr(self, name) or ()):
                _require(index >= 0, f"{path}.{name}[{i}]", index, "must be >= 0")


# ----------------------------------------------------------------------------------------------- root


@dataclass(frozen=True, kw_only=True)
class CompressionConfig(_Checked):
    """The whole ``compression_training`` section, validated on construction."""

    weight_quantization: WeightQuantizationConfig = field(default_factory=WeightQuantizationConfig)
    activation_quantization: ActivationQuantizationConfig = field(default_factory=ActivationQuantizationConfig)
    sparse_pruning: SparsePruningConfig = field(default_factory=SparsePruningConfig)  # type: ignore[valid-type]
    row_pruning: RowPruningConfig = field(default_factory=RowPruningConfig)  # type: ignore[valid-type]
    head_pruning: HeadPruningConfig = field(default_factory=HeadPruningConfig)  # type: ignore[valid-type]
    channel_pruning: ChannelPruningConfig = field(default_factory=ChannelPruningConfig)  # type: ignore[valid-type]
    layer_reduction: LayerReductionConfig = field(default_factory=LayerReductionConfig)
    knowledge_distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        _validate_tree(self, SECTION)

    def _check(self, path: str) -> None:
        kd, reduction = self.knowledge_distillation, self.layer_reduction
        if reduction.enabled and kd.attention_layer_map is not None:
            _require(
                len(kd.attention_layer_map) == len(reduction.teacher_layer),
                f"{path}.knowledge_distillation.attention_layer_map",
                list(kd.attention_layer_map),
                f"must have one entry per student layer ({len(reduction.teacher_layer)})",
            )
        if reduction.enabled and kd.hidden_layer_map is not None:
            _require(
                len(kd.hidden_layer_map) == len(reduction.teacher_layer) + 1,
                f"{path}.knowledge_distillation.hidden_layer_map",
                list(kd.hidden_layer_map),
                f"must have one entry per student hidden state ({len(reduction.teacher_layer) + 1})",
            )

    @classmethod
    def from_dict(cls, section: Any) -> "CompressionConfig":
        """Parse the ``compression_training`` object; raises :class:`ConfigError` naming the key path."""
        return from_json(cls, dict(section) if isinstance(section, Mapping) else section, SECTION)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict that :meth:`from_dict` reads back to an equal config."""
        return to_json(self)

    @property
    def enabled(self) -> bool:
        """True if any technique (or KD) is on."""
        return any(getattr(self, f.name).enabled for f in dataclasses.fields(self))


def load_deepspeed_config(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, Any]:
    """Read a DeepSpeed JSON file (or copy a dict); errors name the file."""
    if isinstance(path_or_dict, Mapping):
        try:
            return json.loads(json.dumps(path_or_dict))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"DeepSpeed config: not JSON data ({err})") from None
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise ConfigError(
            f"DeepSpeed config: {path_or_dict!r} (must be a JSON file path, a dict or a CompressionConfig)"
        )
    path = os.fspath(path_or_dict)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: DeepSpeed config file not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object, got {type(data).__name__}")
    return data


_DEEPSPEED_OWNED = frozenset({"weight_quantization"})  # DeepSpeed's own top-level key (ZeRO-Inference post-init)


def _section_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(CompressionConfig)]


def _split_section(ds_config: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(the compression_training section, the rest)`` of a DeepSpeed config, or of the section passed alone.

    A key one typo away from ``compression_training`` is an error, not a config without compression; so is a
    section key (``layer_reduction``, ...) beside DeepSpeed's own keys, which DeepSpeed would ignore.
    """
    rest = dict(ds_config)
    if SECTION in rest:
        return rest.pop(SECTION), rest
    keys = [str(key) for key in rest]
    for key in keys:
        if difflib.get_close_matches(key, [SECTION], n=1, cutoff=0.8):
            raise ConfigError(f"{key}: unknown top-level key; did you mean '{SECTION}'?")
    known = _section_keys()
    inside = [k for k in keys if k in known or difflib.get_close_matches(k, known, n=1, cutoff=0.8)]
    if inside and len(inside) == len(keys):
        return rest, {}  # the section's own body
    misplaced = [key for key in inside if key not in _DEEPSPEED_OWNED]
    if misplaced:
        raise ConfigError(
            f"{misplaced[0]}: a {SECTION} key at the top level of the DeepSpeed config; move it into '{SECTION}'"
        )
    return {}, rest


def has_section(path_or_dict: Union[str, os.PathLike, Mapping[str, Any], CompressionConfig]) -> bool:
    """Whether a config holds a ``compression_training`` section (or is one), even one that enables nothing."""
    if isinstance(path_or_dict, CompressionConfig):
        return True
    ds_config = load_deepspeed_config(path_or_dict)
    return SECTION in ds_config or bool(_split_section(ds_config)[0])


def split_deepspeed_config(
    path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
) -> tuple[CompressionConfig, dict[str, Any]]:
    """Split a DeepSpeed config into the parsed ``compression_training`` section and the rest.

    The rest is what ``deepspeed.initialize`` gets: DeepSpeed >= 0.19 rejects the section, and older
    DeepSpeed would run its own (removed) compression on it.
    """
    section, rest = _split_section(load_deepspeed_config(path_or_dict))
    return CompressionConfig.from_dict(section), rest


def load_compression_config(
    path_or_dict: Union[str, os.PathLike, Mapping[str, Any], CompressionConfig],
) -> CompressionConfig:
    """Parse and validate the ``compression_training`` section of a DeepSpeed config.

    Args:
        path_or_dict: path of a DeepSpeed JSON file, the DeepSpeed config dict, the section dict itself,
            or an already parsed :class:`CompressionConfig` (returned as is).
    Returns:
        The frozen, validated :class:`CompressionConfig`. A config without the section gives the
        all-disabled default (:attr:`CompressionConfig.enabled` is False; the entry points warn about it).
    Raises:
        ConfigError: with the full key path and bad value, e.g.
            ``compression_training.weight_quantization.different_groups.wq1.params.target_bits: 0 (must be 1..8)``;
            also for a near-miss of ``compression_training`` and for anything that is not a JSON object.

    Example:
        >>> cfg = load_compression_config("ds_configs/ds_xtc.json")
        >>> cfg.weight_quantization.different_groups["wq1"].params.target_bits
        1
    """
    if isinstance(path_or_dict, CompressionConfig):
        return path_or_dict
    return split_deepspeed_config(path_or_dict)[0]
