"""BERT-family architectures: where each keeps its transformer layers, which modules play which role, and what
lies outside the layers. Lets one config serve BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT and DeBERTa-v2/v3:
groups name roles (``"@attention"``, :data:`~xtc_ds.config.ROLES`) and layer reduction finds the layer list and the
modules to copy by itself. Verbatim regexes keep working for every model."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from torch import nn

from xtc_ds.config import ROLE_MARK, ROLES, ConfigError

__all__ = ["Architecture", "ARCHITECTURES", "layers_path", "resolve_patterns", "modules_outside"]


@dataclass(frozen=True)
class Architecture:
    """Module names of one family, relative to its base model (``model.bert``, ``model.distilbert``, ...).

    Attributes:
        layers: the ``nn.ModuleList`` of transformer layers.
        parts: part (``qkv``, ``attention_output``, ``ffn_in``, ``ffn_out``) -> regex of its modules inside a layer.
        word_embeddings: the token embedding table.
    """

    layers: str
    parts: dict[str, str]
    word_embeddings: str = "embeddings.word_embeddings"


_BERT = Architecture(
    "encoder.layer",
    {
        "qkv": r"attention\.self\.(query|key|value)",
        "attention_output": r"attention\.output\.dense",
        "ffn_in": r"intermediate\.dense",
        "ffn_out": r"output\.dense",
    },
)
ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": Architecture(
        "transformer.layer",
        {
            "qkv": r"attention\.(q_lin|k_lin|v_lin)",
            "attention_output": r"attention\.out_lin",
            "ffn_in": r"ffn\.lin1",
            "ffn_out": r"ffn\.lin2",
        },
    ),
    "deberta-v2": Architecture(
        "encoder.layer",
        {
            "qkv": r"attention\.self\.(query_proj|key_proj|value_proj|pos_key_proj|pos_query_proj)",
            "attention_output": r"attention\.output\.dense",
            "ffn_in": r"intermediate\.dense",
            "ffn_out": r"output\.dense",
        },
    ),
}
"""``config.model_type`` -> its architecture."""


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _base_prefix(model: nn.Module) -> str:
    """``bert.`` for a ``BertForSequenceClassification``, empty for a bare ``BertModel``."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def layers_path(model: nn.Module, where: str) -> str:
    """The name of ``model``'s transformer layer list (``bert.encoder.layer``).

    Known families come from :data:`ARCHITECTURES`; any other model has it found as its only ``nn.ModuleList``
    of ``config.num_hidden_layers`` modules of one class.

    Raises:
        ConfigError: naming ``where`` (the config key that should have named it) when it cannot be found.
    """
    architecture = ARCHITECTURES.get(_model_type(model))
    if architecture is not None:
        return _base_prefix(model) + architecture.layers
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == depth and len({type(m) for m in module}) == 1
    ]
    if len(lists) != 1:
        found = f"candidates {lists}" if lists else "no ModuleList of config.num_hidden_layers layers"
        raise ConfigError(
            f"{where}: not given, and the layer list of {type(model).__name__} (model_type "
            f"{_model_type(model)!r}) cannot be derived ({found}); name it, e.g. 'bert.encoder.layer'"
        )
    return lists[0]


def _role_regexes(model: nn.Module, role: str, where: str) -> list[str]:
    architecture = ARCHITECTURES.get(_model_type(model))
    if architecture is None:
        raise ConfigError(
            f"{where}: {ROLE_MARK}{role} (module roles are defined for model types {', '.join(ARCHITECTURES)}, "
            f"not {_model_type(model)!r}; use regular expressions of its module names)"
        )
    base = re.escape(_base_prefix(model))
    layers = re.escape(_base_prefix(model) + architecture.layers)
    regexes = []
    for part in ROLES[role]:
        if part == "word_embeddings":
            regexes.append(rf"^{base}{re.escape(architecture.word_embeddings)}$")
        else:
            regexes.append(rf"^{layers}\.\d+\.{architecture.parts[part]}$")
    return regexes


def resolve_patterns(model: nn.Module, patterns: tuple[str, ...], where: str) -> list[str]:
    """A group's ``modules``: each ``"@role"`` replaced by the regexes of its modules in ``model``; regexes and
    ``"*"`` kept as they are.

    Raises:
        ConfigError: a role used on a model type the table does not know (naming ``where[i]``).
    """
    resolved = []
    for i, pattern in enumerate(patterns):
        if pattern.startswith(ROLE_MARK):
            resolved += _role_regexes(model, pattern[len(ROLE_MARK) :], f"{where}[{i}]")
        else:
            resolved.append(pattern)
    return resolved


def modules_outside(model: nn.Module, layers: str) -> list[str]:
    """Every module with tensors that is not inside the layer list ``layers``, as few names as possible:
    the siblings of each module on the path to the list (``classifier``, ``bert.embeddings``, ``bert.pooler``;
    DeBERTa also ``deberta.encoder.rel_embeddings``). Layer reduction copies
    these from the teacher when ``other_module_name`` is not given."""
    names, parent, path = [], model, ""
    for step in layers.split("."):
        for name, child in parent.named_children():
            if name != step and next(itertools.chain(child.parameters(), child.buffers()), None) is not None:
                names.append(path + name)
        parent, path = parent.get_submodule(step), f"{path}{step}."
    return names
