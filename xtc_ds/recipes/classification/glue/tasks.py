"""The nine GLUE tasks: TSV layouts of the official download, ``datasets`` hub names, labels and metrics.

Label ids follow the ``nyu-mll/glue`` hub datasets, so a model trained on TSVs and one trained on hub data
agree on what label 0 means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

__all__ = ["GlueTask", "TASKS", "get_task"]


@dataclass(frozen=True)
class GlueTask:
    """Where a task's examples live and how they are scored.

    Attributes:
        name: ``run_glue`` name (``sst2``).
        folder: folder of the official download (``SST-2``).
        header: whether the TSVs start with a header row (CoLA has none).
        text_columns: TSV columns of the one or two texts.
        label_column: TSV column of the label (negative counts from the end).
        tsv_labels: TSV label string -> class id; ``None`` for regression (STS-B).
        hub_columns: text columns of the hub dataset.
        dev_splits: TSV file stems of the dev sets (MNLI has matched and mismatched).
        metric: ``accuracy``, ``f1`` (F1 and accuracy), ``matthews`` or ``correlation``.
        columns: columns of every row of a headerless TSV (rows of the others have as many as the header).
        label_range: the valid range of a regression score.
    """

    name: str
    folder: str
    header: bool
    text_columns: tuple[int, ...]
    label_column: int
    tsv_labels: Optional[dict[str, int]]
    hub_columns: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    metric: str = "accuracy"
    columns: Optional[int] = None
    label_range: tuple[float, float] = (-math.inf, math.inf)

    @property
    def num_labels(self) -> int:
        """1 for regression, else the number of classes."""
        return 1 if self.tsv_labels is None else len(self.tsv_labels)

    @property
    def is_regression(self) -> bool:
        return self.tsv_labels is None

    def hub_split(self, dev_split: str) -> str:
        """The hub split holding a dev set: ``dev`` -> ``validation``, ``dev_matched`` -> ``validation_matched``."""
        return dev_split.replace("dev", "validation")


_BINARY = {"0": 0, "1": 1}
_ENTAILMENT = {"entailment": 0, "not_entailment": 1}

TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", False, (3,), 1, _BINARY, ("sentence",), metric="matthews", columns=4),
        GlueTask("sst2", "SST-2", True, (0,), 1, _BINARY, ("sentence",)),
        GlueTask("mrpc", "MRPC", True, (3, 4), 0, _BINARY, ("sentence1", "sentence2"), metric="f1"),
        GlueTask(
            "stsb",
            "STS-B",
            True,
            (7, 8),
            -1,
            None,
            ("sentence1", "sentence2"),
            metric="correlation",
            label_range=(0.0, 5.0),
        ),
        GlueTask("qqp", "QQP", True, (3, 4), 5, _BINARY, ("question1", "question2"), metric="f1"),
        GlueTask(
            "mnli",
            "MNLI",
            True,
            (8, 9),
            -1,
            {"entailment": 0, "neutral": 1, "contradiction": 2},
            ("premise", "hypothesis"),
            dev_splits=("dev_matched", "dev_mismatched"),
        ),
        GlueTask("qnli", "QNLI", True, (1, 2), -1, _ENTAILMENT, ("question", "sentence")),
        GlueTask("rte", "RTE", True, (1, 2), -1, _ENTAILMENT, ("sentence1", "sentence2")),
        GlueTask("wnli", "WNLI", True, (1, 2), -1, _BINARY, ("sentence1", "sentence2")),
    )
}


def get_task(name: str) -> GlueTask:
    """Look a task up by its ``run_glue`` name (case-insensitive; ``sst-2``/``sts-b`` spellings accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"--task_name {name!r}: unknown GLUE task (choose from {', '.join(TASKS)})")
    return TASKS[key]
