"""Examples as token tensors, and batches cut back to their longest example."""

from __future__ import annotations

from typing import Any

import torch

from xtc_ds.recipes.classification.data.examples import Example
from xtc_ds.recipes.classification.data.task import TaskSpec

__all__ = ["encode", "trim_padding"]


def encode(examples: list[Example], tokenizer: Any, max_seq_length: int, task: TaskSpec) -> dict[str, torch.Tensor]:
    """Tokenize to fixed-length tensors: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    tokenizer makes them), plus ``labels`` when every example has one (unlabelled rows are for predictions)."""
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if task.pair else None
    batch = tokenizer(
        texts_a, texts_b, padding="max_length", truncation=True, max_length=max_seq_length, return_tensors="pt"
    )
    tensors = {key: value for key, value in batch.items()}
    if all(e.label is not None for e in examples):
        dtype = torch.float32 if task.is_regression else torch.long
        tensors["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
    return tensors


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the token columns that are padding in every row of ``batch`` (dynamic padding).

    Encoding pads to ``max_seq_length`` so that examples can be indexed as one tensor; cutting each batch back
    to its longest example saves the work on padding (SST-2 sentences average about a fifth of 64 tokens).
    Padded positions are masked out of attention, so the result is the same up to float rounding.
    """
    mask = batch["attention_mask"]
    used = mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return batch
    return {
        key: value[:, :length] if value.dim() >= 2 and value.shape[1] == mask.shape[1] else value
        for key, value in batch.items()
    }
