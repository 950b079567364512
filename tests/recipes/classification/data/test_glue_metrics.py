"""GLUE metrics against values computed by hand."""

import math

import pytest
import torch

from xtc_ds.recipes.classification.data import get_task, primary_score, task_metrics
from xtc_ds.recipes.classification.data.metrics import accuracy, f1_score, matthews_corrcoef, pearson, spearman


def test_accuracy_and_f1():
    pred, label = torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1])
    assert accuracy(pred, label) == pytest.approx(3 / 5)
    assert f1_score(pred, label) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1


def test_matthews():
    pred, label = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(pred, label) == pytest.approx(expected)
    assert matthews_corrcoef(torch.ones(4), torch.tensor([1, 0, 1, 0])) == 0.0  # constant prediction


def test_pearson_and_spearman_with_ties():
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 6.0, 8.5])
    assert pearson(x, y) == pytest.approx(10.75 / math.sqrt(5 * 23.1875))  # centred dot / norms, by hand
    assert spearman(x, y) == pytest.approx(1.0)
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), y) == pytest.approx(
        pearson(torch.tensor([1.0, 2.5, 2.5, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    )


def test_task_metrics_and_primary_score():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 0, 0])
    cola = task_metrics(get_task("cola").task, logits, labels)
    assert set(cola) == {"matthews_correlation", "accuracy"}
    assert primary_score(get_task("cola").task, cola) == cola["matthews_correlation"]
    mrpc = task_metrics(get_task("mrpc").task, logits, labels)
    assert primary_score(get_task("mrpc").task, mrpc) == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    stsb = task_metrics(get_task("stsb").task, torch.tensor([[1.0], [2.0], [3.5]]), torch.tensor([1.5, 2.0, 3.0]))
    assert set(stsb) == {"pearson", "spearmanr"} and stsb["spearmanr"] == pytest.approx(1.0)
