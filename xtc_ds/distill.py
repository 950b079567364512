"""One-stage knowledge distillation (XTC): logits, hidden states and attention maps, no ground-truth labels.

``loss = logits_weight * SCE(s, t; T) + hidden_weight * sum MSE(hidden) + attention_weight * sum MSE(attention)``

SCE is the soft cross-entropy ``-sum_c softmax(t/T)_c log_softmax(s/T)_c`` averaged over the batch and
scaled by ``T^2`` (MSE for single-output regression heads such as STS-B). Layer maps come from
``layer_reduction.teacher_layer``: student layer ``i`` learns the attention of teacher layer
``teacher_layer[i]`` and student hidden state ``i+1`` the teacher hidden state ``teacher_layer[i]+1``;
hidden state 0 (the embeddings, copied from the teacher) is matched to teacher hidden state 0 (the legacy
example matched it to ``teacher_layer[0]-1``, which is wrong whenever ``teacher_layer[0] != 1``).

Attention maps are the post-softmax probabilities Hugging Face models return with
``output_attentions=True``; SDPA/flash attention returns none, so attention KD needs eager attention
(:func:`require_eager_attention`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds._compat import attn_implementation
from xtc_ds.config import SECTION, ConfigError, load_compression_config

__all__ = ["DistillationLoss", "distillation_loss", "require_eager_attention"]

_PATH = f"{SECTION}.knowledge_distillation"


def _field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def require_eager_attention(model: nn.Module) -> None:
    """Make a Hugging Face model return attention maps (eager attention), or raise saying how to load it."""
    config = getattr(model, "config", None)
    if config is None or attn_implementation(config) == "eager":
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        return
    raise ConfigError(
        f"{_PATH}.attention_weight: attention KD needs attention maps, which "
        f"{attn_implementation(config)!r} attention does not return; load the model with attn_implementation='eager' "
        f"or set attention_weight to 0"
    )


def _checked_map(
    layer_map: Optional[Sequence[int]], student_count: int, teacher_count: int, what: str
) -> Sequence[int]:
    """The layer map (identity by default) after checking it fits ``student_count`` and ``teacher_count`` outputs."""
    key = "hidden_states" if what == "hidden" else "attentions"
    layer_map = tuple(range(student_count)) if layer_map is None else layer_map
    if len(layer_map) != student_count:
        raise ConfigError(
            f"{_PATH}.{what}_layer_map: {list(layer_map)} (has {len(layer_map)} entries; the student returns "
            f"{student_count} {key})"
        )
    for t_index in layer_map:
        if t_index >= teacher_count:
            raise ConfigError(f"{_PATH}.{what}_layer_map: {t_index} (the teacher returns only {teacher_count} {key})")
    return layer_map


class DistillationLoss:
    """The XTC one-stage KD loss, built once from the config.

    Args:
        deepspeed_config: path, dict or :class:`CompressionConfig` with ``knowledge_distillation.enabled``.
    Raises:
        ConfigError: if knowledge distillation is not enabled.
    """

    def __init__(self, deepspeed_config: Any) -> None:
        config = load_compression_config(deepspeed_config)
        self.kd = config.knowledge_distillation
        if not self.kd.enabled:
            raise ConfigError(f"{_PATH}.enabled: False (set it to true to use distillation_loss)")
        reduction = config.layer_reduction
        teacher_layer: Optional[Sequence[int]] = reduction.teacher_layer if reduction.enabled else None
        self.attention_map = self.kd.attention_layer_map or (tuple(teacher_layer) if teacher_layer else None)
        default_hidden = (0, *(t + 1 for t in teacher_layer)) if teacher_layer else None
        self.hidden_map = self.kd.hidden_layer_map or default_hidden

    @property
    def model_kwargs(self) -> dict[str, bool]:
        """Keyword arguments that make student and teacher return what this loss reads."""
        return {"output_hidden_states": self.kd.hidden_weight > 0, "output_attentions": self.kd.attention_weight > 0}

    def _logits_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"KD logits: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
        if student.shape[-1] == 1:
            return F.mse_loss(student.float(), teacher.float())
        temperature = self.kd.temperature
        target = F.softmax(teacher.float() / temperature, dim=-1)
        log_prob = F.log_softmax(student.float() / temperature, dim=-1)
        return -(target * log_prob).sum(dim=-1).mean() * temperature**2

    def _layer_term(self, student: Any, teacher: Any, layer_map: Optional[Sequence[int]], what: str) -> torch.Tensor:
        if student is None or teacher is None:
            flag = "output_hidden_states" if what == "hidden" else "output_attentions"
            raise ValueError(
                f"KD {what} term: call student and teacher with {flag}=True (see DistillationLoss.model_kwargs), "
                f"or set {_PATH}.{what}_weight to 0"
            )
        layer_map = _checked_map(layer_map, len(student), len(teacher), what)
        total = student[0].new_zeros((), dtype=torch.float32)
        for s, t_index in zip(student, layer_map):
            total = total + F.mse_loss(s.float(), teacher[t_index].detach().float())
        return total

    def check_layers(self, student_layers: int, teacher_layers: int) -> None:
        """Check the layer maps against both models' depths before any training, not at the first KD step.

        Raises:
            ConfigError: a map whose length is not the student's count, or that names a teacher layer beyond it.
        """
        if self.kd.hidden_weight > 0:
            _checked_map(self.hidden_map, student_layers + 1, teacher_layers + 1, "hidden")
        if self.kd.attention_weight > 0:
            _checked_map(self.attention_map, student_layers, teacher_layers, "attention")

    def terms(self, student_outputs: Any, teacher_outputs: Any) -> dict[str, torch.Tensor]:
        """Unweighted ``logits``, ``hidden`` and ``attention`` terms (a term whose weight is 0 is not computed)."""
        terms = {}
        if self.kd.logits_weight > 0:
            terms["logits"] = self._logits_term(
                _field(student_outputs, "logits"), _field(teacher_outputs, "logits").detach()
            )
        if self.kd.hidden_weight > 0:
            terms["hidden"] = self._layer_term(
                _field(student_outputs, "hidden_states"),
                _field(teacher_outputs, "hidden_states"),
                self.hidden_map,
                "hidden",
            )
        if self.kd.attention_weight > 0:
            terms["attention"] = self._layer_term(
                _field(student_outputs, "attentions"),
                _field(teacher_outputs, "attentions"),
                self.attention_map,
                "attention",
            )
        return terms

    def __call__(self, student_outputs: Any, teacher_outputs: Any) -> torch.Tensor:
        """Weighted sum of :meth:`terms`, a scalar float32 tensor."""
        weights = {
            "logits": self.kd.logits_weight,
            "hidden": self.kd.hidden_weight,
            "attention": self.kd.attention_weight,
        }
        terms = self.terms(student_outputs, teacher_outputs)
        if not terms:
            raise ConfigError(f"{_PATH}: logits_weight, hidden_weight and attention_weight are all 0")
        return sum(weights[name] * value for name, value in terms.items())


@functools.lru_cache(maxsize=8)
def _loss_for_file(path: str, mtime: float) -> DistillationLoss:
    return DistillationLoss(path)


def distillation_loss(student_outputs: Any, teacher_outputs: Any, deepspeed_config: Any) -> torch.Tensor:
    """XTC one-stage KD loss between two Hugging Face model outputs.

    Args:
        student_outputs, teacher_outputs: model outputs (``logits``; ``hidden_states`` and ``attentions``
            when their weights are non-zero, so call the models with ``output_hidden_states=True,
            output_attentions=True``).
        deepspeed_config: path, dict or :class:`CompressionConfig`; a file is parsed once.
    Returns:
        Scalar float32 loss.

    Example:
        >>> with torch.no_grad():
        ...     t_out = teacher(**batch, output_hidden_states=True, output_attentions=True)
        >>> s_out = engine(**batch, output_hidden_states=True, output_attentions=True)
        >>> loss = xtc_ds.distillation_loss(s_out, t_out, "ds_configs/ds_xtc.json")
    """
    if isinstance(deepspeed_config, (str, os.PathLike)):
        path = os.fspath(deepspeed_config)
        loss = _loss_for_file(path, os.path.getmtime(path) if os.path.exists(path) else 0.0)
    else:
        loss = DistillationLoss(deepspeed_config)
    return loss(student_outputs, teacher_outputs)
