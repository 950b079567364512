"""``predictions.tsv``: what a model predicts for each test row, in ``run_glue``'s format (``index``, then the
class name, or the score to three decimals for regression)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xtc_ds.files import write_text_atomic
from xtc_ds.recipes.classification.data import TaskSpec
from xtc_ds.recipes.classification.trainer import predict_logits

__all__ = ["PREDICTIONS_FILE", "write_predictions"]

PREDICTIONS_FILE = "predictions.tsv"


def write_predictions(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    task: TaskSpec,
    output_dir: Path,
    batch_size: int,
    pad_to_max_length: bool = False,
) -> Path:
    """Predict every row of ``tensors`` and write ``output_dir/predictions.tsv`` atomically; returns its path."""
    logits = predict_logits(model, tensors, batch_size, pad_to_max_length)
    if task.label_names is None:
        values = [f"{score:.3f}" for score in logits.reshape(-1).tolist()]
    else:
        values = [task.label_names[i] for i in logits.argmax(dim=-1).tolist()]
    lines = ["index\tprediction"] + [f"{i}\t{value}" for i, value in enumerate(values)]
    path = output_dir / PREDICTIONS_FILE
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
