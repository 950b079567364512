"""What a classification run predicts and how it is scored: its label set (or regression) and its metrics.

GLUE tasks are presets of this (:mod:`.glue`); any other dataset gets one from its training labels
(:mod:`.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["TaskSpec", "METRIC_CHOICES", "dataset_task"]

METRIC_CHOICES = ("accuracy", "f1", "matthews", "pearson", "spearman")
"""``--metric_name`` values: what picks the best checkpoint of a dataset that is not a GLUE task."""

_REPORTED = {  # --metric_name -> the metric key it selects
    "accuracy": "accuracy",
    "f1": "macro_f1",
    "matthews": "matthews_correlation",
    "pearson": "pearson",
    "spearman": "spearmanr",
}


@dataclass(frozen=True)
class TaskSpec:
    """A sequence-classification (or regression) task.

    Attributes:
        name: shown in the plan and results (``sst2``, or the dataset's name).
        label_names: class names in id order; None for regression (one output, float targets).
        pair: whether an example has a second text (sentence pairs).
        metrics: the metric keys reported on every dev set (:data:`~.metrics.METRICS`).
        primary: the keys whose mean picks the best checkpoint.
    """

    name: str
    label_names: Optional[tuple[str, ...]]
    pair: bool
    metrics: tuple[str, ...]
    primary: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """1 for regression, else the number of classes."""
        return 1 if self.label_names is None else len(self.label_names)

    def model_labels(self) -> dict[str, object]:
        """The Hugging Face config fields that say what the classifier's outputs mean."""
        if self.label_names is None:
            return {"num_labels": 1, "problem_type": "regression"}
        return {
            "num_labels": len(self.label_names),
            "problem_type": "single_label_classification",
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
        }


def dataset_task(
    name: str, label_names: Optional[tuple[str, ...]], pair: bool, metric_name: Optional[str]
) -> TaskSpec:
    """The task of a dataset that is not a GLUE task.

    Classification reports accuracy and macro-F1 (plus the Matthews correlation when chosen) and picks checkpoints
    by accuracy unless ``metric_name`` says otherwise; regression reports Pearson and Spearman correlations and
    picks by Pearson's.

    Raises:
        ValueError: ``metric_name`` that does not fit the label type.
    """
    if label_names is None:
        metrics, default, allowed = ("pearson", "spearmanr"), "pearson", ("pearson", "spearman")
    else:
        metrics, default, allowed = ("accuracy", "macro_f1"), "accuracy", ("accuracy", "f1", "matthews")
    if metric_name is not None and metric_name not in allowed:
        kind = "regression" if label_names is None else "classification"
        raise ValueError(f"--metric_name {metric_name}: not a {kind} metric (choose from {', '.join(allowed)})")
    primary = _REPORTED[metric_name or default]
    if primary not in metrics:
        metrics += (primary,)
    return TaskSpec(name, label_names, pair, metrics, (primary,))
