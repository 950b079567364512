"""Every use of a private internal of transformers, accelerate, DeepSpeed or pandas, in one place.

Each helper names the internal it touches and the versions it was checked on; ``tests/test_compat.py`` fails,
naming the internal, when an installed version no longer has it. Nothing else in xtc_ds reaches into these
libraries' private names (``XtcTrainer`` overrides the :data:`TRAINER_HOOKS`, which this module lists and the test
checks).
"""

from __future__ import annotations

import re
from typing import Any, Optional

__all__ = [
    "CHECKED_ON",
    "TRAINER_HOOKS",
    "set_attn_implementation",
    "attn_implementation",
    "zero3_consolidated_state_dict",
    "invalidate_zero3_trace",
    "deepspeed_compatible_ops",
    "set_accelerate_world",
    "parser_field_counts",
]

CHECKED_ON = {
    "transformers": "4.46 to 5.25",
    "accelerate": "1.0 to 1.16",
    "deepspeed": "0.16 to 0.19.8",
    "pandas": "2.2 to 3.1",
}
"""The versions each helper below was checked on (the test suite runs on the newest)."""

TRAINER_HOOKS = {
    "_load_best_model": ("self",),
    "_determine_best_metric": ("self", "metrics", "trial"),
    "_save_checkpoint": ("self", "model", "trial"),
}
"""Private ``transformers.Trainer`` methods ``XtcTrainer`` overrides, with the leading parameters it relies on:
restoring the compression schedule with the best model, and keeping the best-checkpoint choice to evaluations
whose schedule is final (``_determine_best_metric`` from transformers 4.48, ``_save_checkpoint``'s ``metrics``
before)."""


def set_attn_implementation(hf_config: Any, implementation: str) -> None:
    """Build a model with ``implementation`` attention (transformers' ``PretrainedConfig._attn_implementation``,
    which ``from_config`` reads; the public ``attn_implementation=`` argument exists only on ``from_pretrained``)."""
    hf_config._attn_implementation = implementation


def attn_implementation(hf_config: Any) -> Optional[str]:
    """The attention a model runs (``PretrainedConfig._attn_implementation``; ``eager`` for a config without it)."""
    return getattr(hf_config, "_attn_implementation", "eager")


def zero3_consolidated_state_dict(engine: Any) -> dict[str, Any]:
    """A ZeRO-3 engine's whole state dict on rank 0, every rank calling (DeepSpeed's
    ``DeepSpeedEngine._zero3_consolidated_16bit_state_dict``, which ``save_16bit_model`` uses, without its file)."""
    return engine._zero3_consolidated_16bit_state_dict()


def invalidate_zero3_trace(coordinator: Any) -> None:
    """Make a ZeRO-3 parameter coordinator re-record its fetch order (DeepSpeed's
    ``PartitionedParameterCoordinator._invalidate_trace``, as DeepSpeed does when it re-registers its hooks)."""
    if not coordinator.is_invalid_trace():
        coordinator._invalidate_trace()


def deepspeed_compatible_ops() -> dict[str, bool]:
    """DeepSpeed's table of ops it may build on this machine (``deepspeed.ops.__compatible_ops__``), which it reads
    before building one; setting an op to False skips its build."""
    import deepspeed.ops

    return deepspeed.ops.__compatible_ops__


def set_accelerate_world(state: Any, backend: str, world: int, rank: int, local_rank: int) -> None:
    """Tell accelerate's shared ``PartialState`` (``TrainingArguments.distributed_state``) the process group DeepSpeed
    started: its ``backend``, ``num_processes``, ``process_index`` and ``local_process_index`` fields, which
    accelerate fills only for GPU backends."""
    state.backend = backend
    state.num_processes, state.process_index, state.local_process_index = world, rank, local_rank


_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def parser_field_counts(text: str) -> Optional[tuple[int, int, int]]:
    """``(expected, line, saw)`` from pandas' C parser error text ("Expected 2 fields in line 7, saw 3"), which the
    ``datasets`` CSV reader raises for a row with too many fields; None for any other text."""
    found = _FIELDS.search(text)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))
