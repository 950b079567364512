"""The ``compression_training`` section: the legacy DeepSpeed schema (0.7-0.18) plus ``knowledge_distillation``.

Parsed once into frozen dataclasses (one module per technique family: ``quantization``, ``pruning``,
``distillation``; shared pieces in ``base``); no other module reads the raw dict. JSON keys are the field names
exactly, so every legacy config loads unchanged. Defaults are the legacy *code* defaults (not the
legacy docs, which disagreed with the code in several places; see docs/CONFIG.md).
"""

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from xtc_ds._schema import ConfigError, from_json, to_json
from xtc_ds.config.base import (
    PER_ROW,
    ROLE_MARK,
    ROLES,
    SECTION,
    Checked,
    PruningMethod,
    QuantizationType,
    RangeCalibration,
    Rounding,
    require,
    validate_tree,
)
from xtc_ds.config.distillation import DistillationConfig, LayerReductionConfig
from xtc_ds.config.pruning import ChannelPruningConfig, HeadPruningConfig, RowPruningConfig, SparsePruningConfig
from xtc_ds.config.quantization import ActivationQuantizationConfig, WeightQuantizationConfig, WeightQuantParams

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
    "PER_ROW",
    "ROLES",
    "ROLE_MARK",
    "WeightQuantParams",
]


@dataclass(frozen=True, kw_only=True)
class CompressionConfig(Checked):
    """The whole ``compression_training`` section, validated on construction."""

    weight_quantization: WeightQuantizationConfig = field(default_factory=WeightQuantizationConfig)
    activation_quantization: ActivationQuantizationConfig = field(default_factory=ActivationQuantizationConfig)
    sparse_pruning: SparsePruningConfig = field(default_factory=SparsePruningConfig)
    row_pruning: RowPruningConfig = field(default_factory=RowPruningConfig)
    head_pruning: HeadPruningConfig = field(default_factory=HeadPruningConfig)
    channel_pruning: ChannelPruningConfig = field(default_factory=ChannelPruningConfig)
    layer_reduction: LayerReductionConfig = field(default_factory=LayerReductionConfig)
    knowledge_distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        validate_tree(self, SECTION)

    def _check(self, path: str) -> None:
        kd, reduction = self.knowledge_distillation, self.layer_reduction
        if reduction.enabled and kd.attention_layer_map is not None:
            require(
                len(kd.attention_layer_map) == len(reduction.teacher_layer),
                f"{path}.knowledge_distillation.attention_layer_map",
                list(kd.attention_layer_map),
                f"must have one entry per student layer ({len(reduction.teacher_layer)})",
            )
        if reduction.enabled and kd.hidden_layer_map is not None:
            require(
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
