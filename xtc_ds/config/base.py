"""Pieces every section of the schema shares: choices, the validation base class and a group's module scope.

No ``from __future__ import annotations`` in this package: the JSON reader takes field types from the
dataclass fields themselves.
"""

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from xtc_ds._schema import ConfigError

__all__ = [
    "SECTION",
    "PER_ROW",
    "QuantizationType",
    "Rounding",
    "RangeCalibration",
    "PruningMethod",
    "Checked",
    "require",
    "validate_tree",
    "GroupConfig",
    "ROLES",
    "ROLE_MARK",
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


class Checked:
    """Base of every schema dataclass: ``_check(path)`` validates the object's own values."""

    def _check(self, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path`` if a value is out of range."""


def require(ok: bool, path: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {value!r} ({rule})")


def validate_tree(obj: Any, path: str) -> None:
    if isinstance(obj, Checked):
        for f in dataclasses.fields(obj):
            validate_tree(getattr(obj, f.name), f"{path}.{f.name}")
        obj._check(path)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            validate_tree(item, f"{path}.{key}")


ROLE_MARK = "@"
ROLES: dict[str, tuple[str, ...]] = {
    "attention.qkv": ("qkv",),
    "attention.output": ("attention_output",),
    "attention": ("qkv", "attention_output"),
    "ffn.in": ("ffn_in",),
    "ffn.out": ("ffn_out",),
    "ffn": ("ffn_in", "ffn_out"),
    "layers": ("qkv", "attention_output", "ffn_in", "ffn_out"),
    "word_embeddings": ("word_embeddings",),
}
"""Module roles a group may name as ``"@role"`` instead of a regex -> the parts of a transformer they cover,
resolved per architecture by :mod:`xtc_ds.architectures` (``@layers`` is every Linear of every layer)."""


@dataclass(frozen=True, kw_only=True)
class GroupConfig(Checked):
    """Scope of one group: ``modules`` regexes (``re.search`` on module names) or ``"@role"`` names (:data:`ROLES`);
    ``"*"`` means all eligible."""

    modules: tuple[str, ...] = ("*",)
    related_modules: Optional[tuple[tuple[str, ...], ...]] = None

    def _check(self, path: str) -> None:
        require(len(self.modules) > 0, f"{path}.modules", list(self.modules), "must list at least one pattern")
        patterns = [(f"{path}.modules[{i}]", p) for i, p in enumerate(self.modules)]
        for i, related in enumerate(self.related_modules or ()):
            patterns += [(f"{path}.related_modules[{i}][{j}]", p) for j, p in enumerate(related)]
        for where, pattern in patterns:
            if pattern == "*":
                continue
            if pattern.startswith(ROLE_MARK):
                known = ", ".join(ROLE_MARK + role for role in ROLES)
                require(pattern[1:] in ROLES, where, pattern, f"unknown module role; roles: {known}")
                continue
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"{where}: {pattern!r} (invalid regular expression: {err})") from None
