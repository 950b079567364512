"""GLUE tasks, data readers and metrics used by the pipeline."""

from xtc_ds.recipes.classification.glue.data import (
    GlueDataError,
    GlueExample,
    encode,
    load_examples,
    read_tsv,
    trim_padding,
)
from xtc_ds.recipes.classification.glue.metrics import primary_score, task_metrics
from xtc_ds.recipes.classification.glue.tasks import TASKS, GlueTask, get_task

__all__ = [
    "GlueTask",
    "TASKS",
    "get_task",
    "GlueExample",
    "GlueDataError",
    "read_tsv",
    "load_examples",
    "encode",
    "trim_padding",
    "task_metrics",
    "primary_score",
]
