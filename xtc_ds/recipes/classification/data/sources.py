"""The run's data from the flags: a GLUE task (``--task_name``), the user's own files (``--train_file`` ...) or a
``datasets`` hub dataset (``--dataset_name``), read the way Hugging Face's ``run_classification.py`` reads them.

Text columns default to ``sentence1,sentence2``, else ``sentence``, else ``text``; the label column to
``label``. Class names are the training labels in sorted order (integers numerically); float labels are
regression. Dev labels must occur in training; every bad row is an error naming its file and line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.data.examples import Example, LabelRule, infer_label_names, to_examples
from xtc_ds.recipes.classification.data.glue import get_task, load_glue, resolve_task_dir
from xtc_ds.recipes.classification.data.tables import Table, hub_table, load_hub_dataset, read_table
from xtc_ds.recipes.classification.data.task import TaskSpec, dataset_task

__all__ = ["TaskData", "DEFAULT_TASK", "data_name", "load_task_data"]

DEFAULT_TASK = "sst2"
"""The GLUE task of a run that names no data."""


@dataclass(frozen=True)
class TaskData:
    """Everything a run reads: the task, its training and dev examples, and the rows to predict.

    Attributes:
        task: labels and metrics.
        splits: ``train`` and one or more dev splits (``dev``; MNLI: ``dev_matched``, ``dev_mismatched``).
        test: unlabelled rows for ``--do_predict``, else None.
    """

    task: TaskSpec
    splits: dict[str, list[Example]]
    test: Optional[list[Example]] = None


def data_name(args: argparse.Namespace) -> str:
    """A short name of the data: the GLUE task, the hub dataset, or the training file (its folder for
    ``train.csv``-style names); used in the default output folder and the results."""
    if args.dataset_name:
        name = args.dataset_name.replace("/", "_")
        return f"{name}-{args.dataset_config_name}" if args.dataset_config_name else name
    if args.train_file:
        path = Path(args.train_file).resolve()
        return path.parent.name if path.stem.lower() in ("train", "training") else path.stem
    return get_task(args.task_name or DEFAULT_TASK).name


def _text_columns(table: Table, flag: Optional[str]) -> list[str]:
    if flag:
        names = [name.strip() for name in flag.split(",")]
        if not 1 <= len(names) <= 2 or not all(names):
            raise DataError(f"--text_column_names {flag!r}: give one column or two separated by a comma")
        return names
    columns = table.columns
    if "sentence1" in columns and "sentence2" in columns:
        return ["sentence1", "sentence2"]
    for name in ("sentence", "text"):
        if name in columns:
            return [name]
    raise DataError(
        f"{table.source}: no 'sentence', 'text' or 'sentence1'/'sentence2' column (columns: "
        f"{', '.join(columns)}); name the text columns with --text_column_names"
    )


def _labelled_tables(train: Table, devs: dict[str, Table], args: argparse.Namespace, name: str) -> TaskData:
    """Task and examples of tables with named columns (user files or a hub dataset)."""
    texts = _text_columns(train, args.text_column_names)
    label = args.label_column_name
    feature = train.rows.features.get(label)
    class_names = getattr(feature, "names", None)  # a hub ClassLabel stores ids and names them
    if class_names is not None and not args.do_regression:
        label_names, rule = tuple(class_names), LabelRule({n: i for i, n in enumerate(class_names)}, stored_ids=True)
    else:
        label_names = infer_label_names(train, label, args.do_regression)
        ids = None if label_names is None else {n: i for i, n in enumerate(label_names)}
        rule = LabelRule(ids, seen_in=train.source)
    try:
        task = dataset_task(name, label_names, len(texts) == 2, args.metric_name)
    except ValueError as err:
        raise DataError(str(err)) from None
    splits = {"train": to_examples(train, texts, label, rule)}
    splits.update({split: to_examples(table, texts, label, rule) for split, table in devs.items()})
    return TaskData(task, splits)


def _with_test(data: TaskData, table: Optional[Table], texts: Optional[list[str]]) -> TaskData:
    """``data`` plus the unlabelled rows of ``table`` (its label column, if any, is not read)."""
    if table is None:
        return data
    return TaskData(data.task, data.splits, to_examples(table, texts or [], None, None))


def _glue_test_table(args: argparse.Namespace) -> Optional[Table]:
    if not args.do_predict:
        return None
    if args.test_file:
        return read_table(args.test_file)
    preset = get_task(args.task_name or DEFAULT_TASK)
    folder = resolve_task_dir(preset, args.data_dir)
    if folder is None or not (folder / "test.tsv").is_file():
        raise DataError(f"--do_predict: no --test_file given and no test.tsv for {preset.name} in --data_dir")
    return read_table(folder / "test.tsv")


def load_task_data(args: argparse.Namespace) -> TaskData:
    """Read and check the data the flags name (see the module docstring).

    Raises:
        DataError: a missing file, column, split or label, or a bad row (naming file and line).
    """
    name = data_name(args)
    if args.train_file or args.dataset_name:
        if args.train_file:
            train, dev = read_table(args.train_file), read_table(args.validation_file)
            test = read_table(args.test_file) if args.do_predict else None
        else:
            hint = f"--dataset_name {args.dataset_name}: pass local files with --train_file/--validation_file instead"
            loaded = load_hub_dataset(args.dataset_name, args.dataset_config_name, hint)
            train = hub_table(loaded, name, "train")
            dev = hub_table(loaded, name, "validation" if "validation" in loaded else "dev")
            test = hub_table(loaded, name, "test") if args.do_predict else None
        data = _labelled_tables(train, {"dev": dev}, args, name)
        texts = _text_columns(test, args.text_column_names) if test is not None else None
        if texts is not None and len(texts) != 1 + data.task.pair:
            raise DataError(f"{test.source}: text columns {texts}, but training examples have {1 + data.task.pair}")
        return _with_test(data, test, texts)
    preset = get_task(args.task_name or DEFAULT_TASK)
    data = TaskData(preset.task, load_glue(preset, args.data_dir))
    return _with_test(data, _glue_test_table(args), list(preset.text_columns))
