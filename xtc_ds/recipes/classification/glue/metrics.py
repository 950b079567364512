"""GLUE metrics as GLUE defines them, in a few lines of torch (``datasets.load_metric`` is gone)."""

from __future__ import annotations

import torch

from xtc_ds.recipes.classification.glue.tasks import GlueTask

__all__ = ["accuracy", "f1_score", "matthews_corrcoef", "pearson", "spearman", "task_metrics", "primary_score"]


def accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    return (pred == label).double().mean().item()


def f1_score(pred: torch.Tensor, label: torch.Tensor) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    tp = ((pred == 1) & (label == 1)).sum().item()
    fp = ((pred == 1) & (label == 0)).sum().item()
    fn = ((pred == 0) & (label == 1)).sum().item()
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Matthews correlation of binary predictions (0 when a marginal is constant), as GLUE reports for CoLA."""
    tp = ((pred == 1) & (label == 1)).sum().item()
    tn = ((pred == 0) & (label == 0)).sum().item()
    fp = ((pred == 1) & (label == 0)).sum().item()
    fn = ((pred == 0) & (label == 1)).sum().item()
    denominator = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


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


def task_metrics(task: GlueTask, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The task's GLUE metrics from model outputs ``(N, num_labels)`` and labels ``(N,)``."""
    if task.is_regression:
        scores = logits.reshape(-1)
        return {"pearson": pearson(scores, labels), "spearmanr": spearman(scores, labels)}
    pred = logits.argmax(dim=-1)
    if task.metric == "matthews":
        return {"matthews_correlation": matthews_corrcoef(pred, labels), "accuracy": accuracy(pred, labels)}
    if task.metric == "f1":
        return {"f1": f1_score(pred, labels), "accuracy": accuracy(pred, labels)}
    return {"accuracy": accuracy(pred, labels)}


def primary_score(task: GlueTask, metrics: dict[str, float]) -> float:
    """One number to pick the best checkpoint by: MCC for CoLA, mean of the pair for MRPC/QQP/STS-B, else accuracy."""
    if task.metric == "matthews":
        return metrics["matthews_correlation"]
    if task.metric == "f1":
        return (metrics["f1"] + metrics["accuracy"]) / 2
    if task.metric == "correlation":
        return (metrics["pearson"] + metrics["spearmanr"]) / 2
    return metrics["accuracy"]
