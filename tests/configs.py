"""DeepSpeed configs for tests and benchmarks: the shipped recipes in ``ds_configs/``, changed where needed.

One definition of XTC's 1-bit-weight / 8-bit-activation recipe (``ds_xtc_1bit.json``) instead of a copy of its
dict in every test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

RECIPES = Path(__file__).resolve().parents[1] / "ds_configs"


def recipe(
    name: str = "ds_xtc_1bit.json",
    *,
    bits: Optional[int] = None,
    kd: Optional[bool] = None,
    extra_modules: tuple[str, ...] = (),
    **deepspeed: Any,
) -> dict[str, Any]:
    """The DeepSpeed config ``ds_configs/<name>`` with changes.

    Args:
        bits: start and target bits of every weight group.
        kd: switch knowledge distillation on or off.
        extra_modules: module patterns added to every weight and activation group.
        **deepspeed: top-level DeepSpeed keys to set (``train_batch_size=...``).
    """
    config = json.loads((RECIPES / name).read_text(encoding="utf-8"))
    section = config["compression_training"]
    for technique in ("weight_quantization", "activation_quantization"):
        for group in section.get(technique, {}).get("different_groups", {}).values():
            group["modules"] += list(extra_modules)
            if bits is not None and technique == "weight_quantization":
                group["params"].update(start_bits=bits, target_bits=bits)
    if kd is not None:
        section.setdefault("knowledge_distillation", {})["enabled"] = kd
    config.update(deepspeed)
    return config


def section(name: str = "ds_xtc_1bit.json", **changes: Any) -> dict[str, Any]:
    """Only the ``compression_training`` section of :func:`recipe`."""
    return recipe(name, **changes)["compression_training"]


def resnet_channel_pruning(method: str = "l1", schedule_offset: int = 0, related: bool = True) -> dict[str, Any]:
    """A ``channel_pruning`` section for Hugging Face's ResNet (``tests/models.py::tiny_resnet``, ResNet-18 shapes in
    the benchmark): half the channels of every basic block's first convolution, with its BatchNorm2d and the second
    convolution's inputs as related modules (``related=False``: none)."""
    group: dict[str, Any] = {"params": {"dense_ratio": 0.5}, "modules": [r"layers\.\d+\.layer\.0\.convolution"]}
    if related:
        group["related_modules"] = [[r"layer\.0\.normalization", r"layer\.1\.convolution"]]
    return {
        "shared_parameters": {"enabled": True, "schedule_offset": schedule_offset, "method": method},
        "different_groups": {"cp1": group},
    }
