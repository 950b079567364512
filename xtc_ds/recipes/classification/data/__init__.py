"""The recipe's data: GLUE presets, the user's CSV/TSV/JSON files or hub datasets, their metrics and tensors."""

from xtc_ds.recipes.classification.data.encoding import encode, trim_padding
from xtc_ds.recipes.classification.data.examples import Example
from xtc_ds.recipes.classification.data.glue import TASKS, GluePreset, get_task, load_glue
from xtc_ds.recipes.classification.data.metrics import primary_score, task_metrics
from xtc_ds.recipes.classification.data.sources import TaskData, data_name, load_task_data
from xtc_ds.recipes.classification.data.tables import read_table
from xtc_ds.recipes.classification.data.task import METRIC_CHOICES, TaskSpec

__all__ = [
    "TaskSpec",
    "METRIC_CHOICES",
    "GluePreset",
    "TASKS",
    "get_task",
    "load_glue",
    "Example",
    "TaskData",
    "data_name",
    "load_task_data",
    "read_table",
    "encode",
    "trim_padding",
    "task_metrics",
    "primary_score",
]
