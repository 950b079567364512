"""The compression state an injected model carries, and the one way to find it behind a wrapper.

:func:`xtc_ds.inject` attaches a :class:`CompressionState` (the config the model was compressed with, the report
of what was replaced, and whether anything drives the schedule) to the model; the scheduler, ``redundancy_clean``
and export read it from there, so a config handed to them later can be checked against what the model holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from xtc_ds._log import logger
from xtc_ds.config import SECTION, CompressionConfig, ConfigError
from xtc_ds.matching import InjectionReport

__all__ = [
    "CompressionState",
    "UNSTEPPED_WARN_AFTER",
    "unwrap_model",
    "compression_state",
    "attach_state",
    "detach_state",
    "config_differences",
    "require_same_config",
]

UNSTEPPED_WARN_AFTER = 50
_ATTRIBUTE = "_xtc_state"


@dataclass
class CompressionState:
    """Per-model record left by injection: the config, the report, and whether anything drives the schedule."""

    config: CompressionConfig
    report: InjectionReport
    stepped: bool = False
    cleaned: bool = False
    unstepped_train_forwards: int = 0
    hook: Any = None

    def count_forward(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook on the model root: warn once if training runs while nothing steps the schedule."""
        if self.stepped or not module.training:
            return
        self.unstepped_train_forwards += 1
        if self.unstepped_train_forwards == UNSTEPPED_WARN_AFTER:
            wq, aq = self.config.weight_quantization, self.config.activation_quantization
            logger.warning(
                "xtc_ds: %d training forward passes ran but the compression schedule was never stepped, so "
                "quantization stays in its step-0 state (weight quantization %s, activation quantization %s). "
                "Train through xtc_ds.initialize(...) so engine.step() drives it, or call "
                "CompressionScheduler(model).step() after every optimizer step.",
                UNSTEPPED_WARN_AFTER,
                _on_off(wq.shared_parameters.schedule_offset == 0, wq.enabled),
                _on_off(aq.shared_parameters.schedule_offset == 0, aq.enabled),
            )


def _on_off(active_at_zero: bool, enabled: bool) -> str:
    if not enabled:
        return "not configured"
    return "on" if active_at_zero else "off"


def unwrap_model(model: Any) -> Any:
    """The model inside a DeepSpeed engine, ``DistributedDataParallel`` or ``torch.compile`` wrapper (any depth).

    A module that carries a compression state is returned as it is, even if it has a ``module`` attribute.
    """
    seen = 0
    while _own_state(model) is None and seen < 8:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)  # DeepSpeedEngine, DistributedDataParallel
        if not isinstance(inner, nn.Module):
            break
        model, seen = inner, seen + 1
    return model


def _own_state(model: Any) -> Optional[CompressionState]:
    # The object's own attribute: DeepSpeedEngine forwards unknown attributes to the module it wraps.
    return getattr(model, "__dict__", {}).get(_ATTRIBUTE)


def compression_state(model: Any) -> Optional[CompressionState]:
    """The :class:`CompressionState` of an injected model (or of the model inside a wrapper), else None."""
    return _own_state(unwrap_model(model))


def attach_state(model: nn.Module, config: CompressionConfig, report: InjectionReport) -> CompressionState:
    """Record on ``model`` what injection did (and count training forwards until a scheduler steps)."""
    state = CompressionState(config=config, report=report)
    state.hook = model.register_forward_pre_hook(state.count_forward)
    setattr(model, _ATTRIBUTE, state)
    return state


def detach_state(model: nn.Module) -> None:
    """Remove the record :func:`attach_state` left (after a revert)."""
    getattr(model, _ATTRIBUTE).hook.remove()
    delattr(model, _ATTRIBUTE)


def config_differences(recorded: CompressionConfig, given: CompressionConfig) -> list[str]:
    """``path: model <value>, config <value>`` for every key where two configs differ."""
    out: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(f"{path}.{key}", a.get(key, "(absent)"), b.get(key, "(absent)"))
        elif a != b:
            out.append(f"{path}: model {a!r}, config {b!r}")

    walk(SECTION, recorded.to_dict(), given.to_dict())
    return out


def require_same_config(state: CompressionState, config: CompressionConfig, caller: str) -> None:
    """Raise :class:`ConfigError` naming every difference when ``config`` is not what the model holds."""
    differences = config_differences(state.config, config)
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise ConfigError(
            f"{caller}: the config differs from the one the model was compressed with ({shown}). Pass the config "
            "the model was injected with, or None to use it."
        )
