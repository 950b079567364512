"""``layer_reduction`` and ``knowledge_distillation``: the shallower student and its one-stage KD."""

from dataclasses import dataclass
from typing import Optional

from xtc_ds.config.base import Checked, require

__all__ = ["LayerReductionConfig", "DistillationConfig"]


@dataclass(frozen=True, kw_only=True)
class LayerReductionConfig(Checked):
    """Student layer ``i`` is initialized from teacher layer ``teacher_layer[i]`` under ``module_name_prefix``.

    ``module_name_prefix`` and ``other_module_name`` may be left out: :mod:`xtc_ds.architectures` derives them
    from the model (its layer list, and every module outside it)."""

    enabled: bool = False
    keep_number_layer: Optional[int] = None
    module_name_prefix: Optional[str] = None
    teacher_layer: tuple[int, ...] = ()
    other_module_name: tuple[str, ...] = ()

    def _check(self, path: str) -> None:
        if not self.enabled:
            return
        require(
            self.module_name_prefix is None or bool(self.module_name_prefix),
            f"{path}.module_name_prefix",
            self.module_name_prefix,
            "must name the layer list, e.g. 'bert.encoder.layer', or be left out to derive it from the model",
        )
        require(
            len(self.teacher_layer) > 0,
            f"{path}.teacher_layer",
            list(self.teacher_layer),
            "must list at least one teacher layer index",
        )
        for i, index in enumerate(self.teacher_layer):
            require(index >= 0, f"{path}.teacher_layer[{i}]", index, "must be >= 0")
        require(
            len(set(self.teacher_layer)) == len(self.teacher_layer),
            f"{path}.teacher_layer",
            list(self.teacher_layer),
            "indices must be unique",
        )
        keep = self.keep_number_layer
        require(
            keep is None or keep == len(self.teacher_layer),
            f"{path}.keep_number_layer",
            keep,
            f"must equal the number of teacher_layer entries ({len(self.teacher_layer)})",
        )


_TEMPERATURE_RANGE = (0.01, 100.0)  # beyond it the soft targets under/overflow (T**2 scaling, division by T)
_MAX_KD_WEIGHT = 1e4  # a larger weight only turns a finite loss into inf


@dataclass(frozen=True, kw_only=True)
class DistillationConfig(Checked):
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
        require(
            low <= self.temperature <= high, f"{path}.temperature", self.temperature, f"must be in [{low}, {high}]"
        )
        for name in ("logits_weight", "hidden_weight", "attention_weight"):
            weight = getattr(self, name)
            require(0 <= weight <= _MAX_KD_WEIGHT, f"{path}.{name}", weight, f"must be in [0, {_MAX_KD_WEIGHT:g}]")
        for name in ("hidden_layer_map", "attention_layer_map"):
            for i, index in enumerate(getattr(self, name) or ()):
                require(index >= 0, f"{path}.{name}[{i}]", index, "must be >= 0")
