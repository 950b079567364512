"""GLUE examples from the official TSV download or the ``datasets`` hub, and their tokenized tensors.

Sources, in order: ``--data_dir`` (a task folder, or the GLUE root holding task folders), ``$GLUE_DIR``
(the convention of the original BERT repository), then the hub dataset ``nyu-mll/glue``. Offline with no
local data, loading stops at once with a message that says how to point at the TSVs.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import torch

from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.glue.tasks import GlueTask

__all__ = [
    "GlueExample",
    "GlueDataError",
    "read_tsv",
    "resolve_task_dir",
    "load_examples",
    "encode",
    "trim_padding",
]

HUB_DATASET = "nyu-mll/glue"


class GlueDataError(DataError):
    """Missing or malformed GLUE data; the message names the file (and line) or says where data was looked for."""


@dataclass(frozen=True)
class GlueExample:
    text_a: str
    text_b: Optional[str]
    label: Union[int, float]


def _decoded(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the line."""
    raw = path.read_bytes()
    raw = raw.removeprefix(codecs.BOM_UTF8)  # MRPC's files start with a byte-order mark
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise GlueDataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); convert the file to UTF-8"
        ) from None


def _label(raw: str, task: GlueTask, where: str) -> Union[int, float]:
    if task.tsv_labels is not None:
        if raw not in task.tsv_labels:
            raise GlueDataError(f"{where}: label {raw!r} is not one of {sorted(task.tsv_labels)}")
        return task.tsv_labels[raw]
    try:
        score = float(raw)
    except ValueError:
        raise GlueDataError(f"{where}: score {raw!r} is not a number") from None
    low, high = task.label_range
    if not low <= score <= high:  # also refuses nan and inf
        raise GlueDataError(f"{where}: score {raw!r} is outside {task.name}'s range [{low:g}, {high:g}]")
    return score


def read_tsv(path: Union[str, Path], task: GlueTask) -> list[GlueExample]:
    """Read one official GLUE TSV file.

    Raises:
        GlueDataError: naming ``path:line`` for text that is not UTF-8, a row whose column count differs from the
            header's (a tab inside a text shifts every column after it), or a label the task does not have.
    """
    path = Path(path)
    examples = []
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(_decoded(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    expected = len(next(reader, [])) if task.header else task.columns
    for row in reader:
        if not row or row == [""]:
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != expected:
            raise GlueDataError(
                f"{where}: {len(row)} columns, {task.name} rows have {expected}"
                + (" (as its header; is there a tab inside a text?)" if task.header else "")
            )
        label = _label(row[task.label_column].strip(), task, where)
        texts = [row[i] for i in task.text_columns]
        examples.append(GlueExample(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise GlueDataError(f"{path}: no examples")
    return examples


def resolve_task_dir(task: GlueTask, data_dir: Optional[str]) -> Optional[Path]:
    """The folder holding ``train.tsv`` for ``task``, from ``data_dir`` or ``$GLUE_DIR``; None if neither has it."""
    for root in (data_dir, os.environ.get("GLUE_DIR")):
        if not root:
            continue
        for candidate in (Path(root), Path(root) / task.folder):
            if (candidate / "train.tsv").exists():
                return candidate
        if root == data_dir:
            raise GlueDataError(f"--data_dir {data_dir}: no train.tsv there or in {Path(data_dir) / task.folder}")
    return None


def _offline_reason() -> Optional[str]:
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        return f"{host} cannot be resolved ({err})"
    return None


def _hub_examples(task: GlueTask) -> dict[str, list[GlueExample]]:
    hint = (
        f"no local GLUE data for {task.name}: pass --data_dir pointing at the GLUE TSVs "
        f"(a folder with {task.folder}/train.tsv, or that task folder itself) or set $GLUE_DIR"
    )
    reason = _offline_reason()
    if reason is not None:
        raise GlueDataError(f"{hint}; the datasets hub ({HUB_DATASET}) is not reachable: {reason}")
    try:
        import datasets
    except ImportError as err:
        raise GlueDataError(f"{hint}; the datasets library cannot be imported: {err}") from err
    try:
        loaded = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as err:  # any hub failure ends the same way: say where local data would be read from
        raise GlueDataError(f"{hint}; loading {HUB_DATASET}/{task.name} from the hub failed: {err}") from err
    splits = {"train": "train", **{dev: task.hub_split(dev) for dev in task.dev_splits}}
    out = {}
    for ours, theirs in splits.items():
        rows = loaded[theirs]
        columns = [rows[c] for c in task.hub_columns]
        texts_b = columns[1] if len(columns) > 1 else [None] * len(rows)
        labels = rows["label"]
        out[ours] = [
            GlueExample(a, b, float(y) if task.is_regression else int(y))
            for a, b, y in zip(columns[0], texts_b, labels)
        ]
    return out


def load_examples(task: GlueTask, data_dir: Optional[str] = None) -> dict[str, list[GlueExample]]:
    """``{"train": [...], "dev": [...]}`` (MNLI: ``dev_matched`` and ``dev_mismatched``) for ``task``."""
    folder = resolve_task_dir(task, data_dir)
    if folder is None:
        return _hub_examples(task)
    splits = {}
    for split in ("train", *task.dev_splits):
        path = folder / f"{split}.tsv"
        if not path.exists():
            raise GlueDataError(f"{path}: missing (needed for {task.name})")
        splits[split] = read_tsv(path, task)
    return splits


def encode(examples: list[GlueExample], tokenizer, max_seq_length: int, task: GlueTask) -> dict[str, torch.Tensor]:
    """Tokenize to fixed-length tensors: ``input_ids``, ``attention_mask`` (``token_type_ids``), ``labels``."""
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if task.text_columns[1:] else None
    batch = tokenizer(
        texts_a, texts_b, padding="max_length", truncation=True, max_length=max_seq_length, return_tensors="pt"
    )
    dtype = torch.float32 if task.is_regression else torch.long
    tensors = {key: value for key, value in batch.items()}
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
