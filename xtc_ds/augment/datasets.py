"""Training sets of original rows followed by their augmented variants, for a training loop or a ``Trainer``.

Variants carry no label (:func:`no_label`): ``-100`` for classes, which cross-entropy ignores, and NaN for
regression targets, which no loss can take silently. They are meant for the KD loss, which reads the teacher's
outputs and never the labels.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from xtc_ds.augment.store import AugmentedEdits

__all__ = ["NO_CLASS_LABEL", "no_label", "AugmentedRows", "AugmentedDataset"]

NO_CLASS_LABEL = -100
"""The label of a variant of a classification row (PyTorch's and Hugging Face's ``ignore_index``)."""


def no_label(dtype: torch.dtype) -> float | int:
    """The label value of a variant whose source row's labels have ``dtype``."""
    return float("nan") if dtype.is_floating_point else NO_CLASS_LABEL


class AugmentedRows:
    """Padded row tensors (as a tokenizer makes them with ``padding="max_length"``) and, after them, the variants
    in ``edits``, built a batch at a time.

    Args:
        tensors: ``input_ids``, ``attention_mask``, ``labels`` and maybe ``token_type_ids``, one row each.
        edits: the variants of those rows, or None for the rows alone.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], edits: Optional[AugmentedEdits] = None) -> None:
        self.tensors = tensors
        self.edits = edits
        self.originals = len(tensors["input_ids"])
        if edits is not None and len(edits) and int(np.max(edits.source)) >= self.originals:
            raise ValueError(f"{edits.folder}: variants of row {int(np.max(edits.source))} for {self.originals} rows")

    def __len__(self) -> int:
        return self.originals + (len(self.edits) if self.edits is not None else 0)

    def sources(self, indices: torch.Tensor) -> torch.Tensor:
        """The original row behind each index (itself for an original row)."""
        sources = indices.clone()
        variants = indices >= self.originals
        if variants.any():
            wanted = (indices[variants] - self.originals).numpy()
            sources[variants] = torch.from_numpy(np.asarray(self.edits.source[wanted], dtype=np.int64))
        return sources

    def lengths(self) -> torch.Tensor:
        """Tokens of every row (a variant has its source's), for length-grouped batches."""
        own = self.tensors["attention_mask"].sum(dim=1)
        return own[self.sources(torch.arange(len(self)))]

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows at ``indices`` as a batch of tensors; variants with their tokens replaced and no label."""
        sources = self.sources(indices)
        batch = {key: value[sources] for key, value in self.tensors.items()}
        variants = indices >= self.originals
        if variants.any():
            rows = variants.nonzero().flatten()
            batch["input_ids"][rows] = self.edits.apply(indices[rows] - self.originals, batch["input_ids"][rows])
            if "labels" in batch:
                batch["labels"][rows] = no_label(batch["labels"].dtype)
        return batch


class AugmentedDataset(torch.utils.data.Dataset):
    """A tokenized dataset (a ``datasets.Dataset`` or any sequence of feature dicts) followed by the variants of
    its rows, for ``Trainer``: a variant is its source row's features with its tokens replaced and no label.

    Args:
        dataset: the tokenized training rows (``input_ids`` and the other model inputs, ``labels`` or ``label``).
        edits: their variants (:func:`~xtc_ds.augment.augment_rows` on ``ListRows(dataset)``).
        label_names: the label columns to blank in variants.
    """

    def __init__(self, dataset: Any, edits: AugmentedEdits, label_names: tuple[str, ...] = ("labels", "label")):
        self.dataset = dataset
        self.edits = edits
        self.label_names = label_names

    def __len__(self) -> int:
        return len(self.dataset) + len(self.edits)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if index < len(self.dataset):
            return self.dataset[index]
        source, positions, tokens = self.edits.edit(index - len(self.dataset))
        row = dict(self.dataset[source])
        ids = list(row["input_ids"])
        for position, token in zip(positions.tolist(), tokens.tolist()):
            ids[position] = token
        row["input_ids"] = torch.tensor(ids) if isinstance(row["input_ids"], torch.Tensor) else ids
        for name in self.label_names:
            if name in row:
                value = row[name]
                floating = isinstance(value, float) or (isinstance(value, torch.Tensor) and value.is_floating_point())
                row[name] = no_label(torch.float32 if floating else torch.long)
        return row
