"""Examples (one or two texts and a label) from table rows, with every row checked: a missing text or label, a
label the task does not have, or a regression target that is not a finite number is an error naming the row."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.data.tables import Table

__all__ = ["Example", "LabelRule", "infer_label_names", "to_examples"]


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: Optional[str]
    label: Union[int, float, None]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _label_key(value: Any) -> str:
    """A class label as the text it is named by (``1`` and ``"1"`` are the same class)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_key(name: str) -> tuple[int, Union[int, str]]:
    """Integer labels in numeric order (``2`` before ``10``), then the others in text order."""
    try:
        return (0, int(name))
    except ValueError:
        return (1, name)


def infer_label_names(table: Table, column: str, regression: bool) -> Optional[tuple[str, ...]]:
    """The class names of a training table in sorted order, or None when its labels are regression targets.

    A label column of floats (``0.5``, ``3.75``) is regression, integers or strings are classes, as in Hugging
    Face's ``run_classification.py``; ``regression`` forces regression.

    Raises:
        DataError: a missing label (naming the row), or a single class.
    """
    table.require_columns([column], "--label_column_name")
    values = table.rows[column]
    for index, value in enumerate(values):
        if _missing(value):
            raise DataError(f"{table.where(index)}: no label (column {column!r})")
    dtype = getattr(table.rows.features[column], "dtype", "")
    if regression or dtype.startswith("float"):
        return None
    names = sorted({_label_key(value) for value in values}, key=_sort_key)
    if len(names) < 2:
        raise DataError(f"{table.source}: every label is {names[0]!r}; a classifier needs at least two classes")
    return tuple(names)


@dataclass(frozen=True)
class LabelRule:
    """How a label column maps to training targets.

    Attributes:
        ids: class name -> id; None for regression.
        value_range: the valid range of a regression target.
        stored_ids: the column holds class ids already (a hub ``ClassLabel``), checked to be in range.
        seen_in: the file the class names came from, named when a label is not one of them.
    """

    ids: Optional[dict[str, int]]
    value_range: tuple[float, float] = (-math.inf, math.inf)
    stored_ids: bool = False
    seen_in: Optional[str] = None

    def target(self, value: Any) -> Union[int, float]:
        """The training target of a label cell; ValueError says what is wrong with it (the caller adds where)."""
        if self.ids is None:
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"regression target {_label_key(value)!r} is not a number") from None
            low, high = self.value_range
            if not math.isfinite(score) or not low <= score <= high:
                span = "" if math.isinf(low) and math.isinf(high) else f" in [{low:g}, {high:g}]"
                raise ValueError(f"regression target {_label_key(value)!r} is not a finite number{span}")
            return score
        if self.stored_ids:
            if not isinstance(value, int) or not 0 <= value < len(self.ids):
                raise ValueError(f"label id {value!r} is not in [0, {len(self.ids)})")
            return value
        key = _label_key(value)
        if key not in self.ids:
            origin = f" of {self.seen_in}" if self.seen_in else ""
            raise ValueError(f"label {key!r} is not one of the labels{origin}: {sorted(self.ids, key=_sort_key)}")
        return self.ids[key]


def to_examples(
    table: Table, text_columns: list[str], label_column: Optional[str], rule: Optional[LabelRule]
) -> list[Example]:
    """Every row of ``table`` as an :class:`Example`; ``label_column`` None reads unlabelled rows (predictions).

    Raises:
        DataError: naming the file and line (or record) of the first bad row, or the missing column.
    """
    table.require_columns(text_columns, "--text_column_names")
    if label_column is not None:
        table.require_columns([label_column], "--label_column_name")
    texts = [table.rows[name] for name in text_columns]
    labels = table.rows[label_column] if label_column else [None] * len(table.rows)
    examples = []
    for index, label in enumerate(labels):
        row = [column[index] for column in texts]
        for name, text in zip(text_columns, row):
            if _missing(text):
                raise DataError(f"{table.where(index)}: no text in column {name!r}")
        target = None
        if label_column is not None:
            if _missing(label):
                raise DataError(f"{table.where(index)}: no label (column {label_column!r})")
            try:
                target = rule.target(label)
            except ValueError as err:
                raise DataError(f"{table.where(index)}: {err}") from None
        examples.append(Example(str(row[0]), str(row[1]) if len(row) > 1 else None, target))
    return examples
