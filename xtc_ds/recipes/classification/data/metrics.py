"""Classification and regression metrics in a few lines of torch (GLUE's definitions; ``datasets.load_metric`` is
gone and scikit-learn is not a dependency)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from xtc_ds.recipes.classification.data.task import TaskSpec

__all__ = [
    "accuracy",
    "f1_score",
    "macro_f1",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "METRICS",
    "task_metrics",
    "primary_score",
]


def accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    return (pred == label).double().mean().item()


def _f1(pred: torch.Tensor, label: torch.Tensor, positive: int) -> float:
    tp = ((pred == positive) & (label == positive)).sum().item()
    fp = ((pred == positive) & (label != positive)).sum().item()
    fn = ((pred != positive) & (label == positive)).sum().item()
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_score(pred: torch.Tensor, label: torch.Tensor) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return _f1(pred, label, 1)


def macro_f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in labels or predictions."""
    classes = torch.unique(torch.cat([pred.reshape(-1), label.reshape(-1)]))
    return sum(_f1(pred, label, int(c)) for c in classes) / len(classes)


def matthews_corrcoef(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Matthews correlation, multi-class form (Gorodkin's R_K; for two classes the binary MCC GLUE reports for
    CoLA); 0 when predictions or labels are constant."""
    pred, label = pred.reshape(-1).long(), label.reshape(-1).long()
    size = int(max(pred.max(), label.max())) + 1
    predicted, true = torch.bincount(pred, minlength=size).double(), torch.bincount(label, minlength=size).double()
    correct, total = (pred == label).sum().double(), float(len(label))
    numerator = correct * total - (predicted * true).sum()
    denominator = ((total**2 - (predicted**2).sum()) * (total**2 - (true**2).sum())).sqrt()
    return 0.0 if denominator == 0 else (numerator / denominator).item()


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.norm() * y.norm()).item()
    return 0.0 if denominator == 0 else (x @ y).item() / denominator


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their mean rank (what Spearman's rho needs)."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    return mean_rank[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_average_ranks(x), _average_ranks(y))


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "f1": f1_score,
    "macro_f1": macro_f1,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}
"""Metric key -> function of (predicted classes or scores, labels)."""


def task_metrics(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The task's metrics from model outputs ``(N, num_labels)`` and labels ``(N,)``."""
    predicted = logits.reshape(-1) if task.is_regression else logits.argmax(dim=-1)
    return {name: METRICS[name](predicted, labels) for name in task.metrics}


def primary_score(task: TaskSpec, metrics: dict[str, float]) -> float:
    """One number to pick the best checkpoint by: the mean of the task's primary metrics (GLUE: MCC for CoLA, mean
    of F1 and accuracy for MRPC/QQP, of Pearson and Spearman for STS-B, else accuracy)."""
    return sum(metrics[name] for name in task.primary) / len(task.primary)
