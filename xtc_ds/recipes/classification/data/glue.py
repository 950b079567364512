"""The nine GLUE tasks as presets of the general reader: where their files are, which columns hold texts and
label, label ids, and GLUE's metrics.

Sources, in order: ``--data_dir`` (a task folder, or the GLUE root holding task folders), ``$GLUE_DIR`` (the
convention of the original BERT repository), then the hub dataset ``nyu-mll/glue``. Offline with no local data,
loading stops at once with a message that says how to point at the TSVs. Label ids follow the hub datasets, so a
model trained on TSVs and one trained on hub data agree on what label 0 means.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.data.examples import Example, LabelRule, to_examples
from xtc_ds.recipes.classification.data.tables import hub_table, load_hub_dataset, read_table
from xtc_ds.recipes.classification.data.task import TaskSpec

__all__ = ["GluePreset", "TASKS", "HUB_DATASET", "get_task", "resolve_task_dir", "read_glue_tsv", "load_glue"]

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GluePreset:
    """One GLUE task.

    Attributes:
        task: labels and metrics.
        folder: folder of the official download (``SST-2``).
        text_columns: TSV header names of the one or two texts.
        label_column: TSV header name of the label.
        tsv_labels: TSV label text -> class id; None for regression (STS-B).
        hub_columns: text columns of the hub dataset.
        dev_splits: TSV file stems of the dev sets (MNLI has matched and mismatched).
        column_names: the column names of a TSV without a header row (CoLA).
        label_range: the valid range of a regression score.
    """

    task: TaskSpec
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    tsv_labels: Optional[dict[str, int]]
    hub_columns: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    column_names: Optional[tuple[str, ...]] = None
    label_range: tuple[float, float] = (-math.inf, math.inf)

    @property
    def name(self) -> str:
        return self.task.name

    def hub_split(self, dev_split: str) -> str:
        """The hub split holding a dev set: ``dev`` -> ``validation``, ``dev_matched`` -> ``validation_matched``."""
        return dev_split.replace("dev", "validation")

    def label_rule(self, stored_ids: bool = False) -> LabelRule:
        return LabelRule(self.tsv_labels, self.label_range, stored_ids=stored_ids)


_BINARY = {"0": 0, "1": 1}
_ENTAILMENT = {"entailment": 0, "not_entailment": 1}
_ACCURACY = (("accuracy",), ("accuracy",))


def _preset(name, folder, texts, label, tsv_labels, hub_columns, metrics=_ACCURACY, **layout) -> GluePreset:
    names = None if tsv_labels is None else tuple(sorted(tsv_labels, key=tsv_labels.get))
    task = TaskSpec(name, names, len(texts) == 2, *metrics)
    return GluePreset(task, folder, texts, label, tsv_labels, hub_columns, **layout)


_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, GluePreset] = {
    preset.name: preset
    for preset in (
        _preset(
            "cola",
            "CoLA",
            ("sentence",),
            "label",
            _BINARY,
            ("sentence",),
            (("matthews_correlation", "accuracy"), ("matthews_correlation",)),
            column_names=("source", "label", "original", "sentence"),
        ),
        _preset("sst2", "SST-2", ("sentence",), "label", _BINARY, ("sentence",)),
        _preset("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, _PAIR, (("f1", "accuracy"),) * 2),
        _preset(
            "stsb",
            "STS-B",
            _PAIR,
            "score",
            None,
            _PAIR,
            (("pearson", "spearmanr"),) * 2,
            label_range=(0.0, 5.0),
        ),
        _preset(
            "qqp",
            "QQP",
            ("question1", "question2"),
            "is_duplicate",
            _BINARY,
            ("question1", "question2"),
            (("f1", "accuracy"),) * 2,
        ),
        _preset(
            "mnli",
            "MNLI",
            _PAIR,
            "gold_label",
            {"entailment": 0, "neutral": 1, "contradiction": 2},
            ("premise", "hypothesis"),
            dev_splits=("dev_matched", "dev_mismatched"),
        ),
        _preset("qnli", "QNLI", ("question", "sentence"), "label", _ENTAILMENT, ("question", "sentence")),
        _preset("rte", "RTE", _PAIR, "label", _ENTAILMENT, _PAIR),
        _preset("wnli", "WNLI", _PAIR, "label", _BINARY, _PAIR),
    )
}


def get_task(name: str) -> GluePreset:
    """Look a task up by its ``run_glue`` name (case-insensitive; ``sst-2``/``sts-b`` spellings accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"--task_name {name!r}: unknown GLUE task (choose from {', '.join(TASKS)})")
    return TASKS[key]


def resolve_task_dir(preset: GluePreset, data_dir: Optional[str]) -> Optional[Path]:
    """The folder holding ``train.tsv`` for ``preset``, from ``data_dir`` or ``$GLUE_DIR``; None if neither has it."""
    for root in (data_dir, os.environ.get("GLUE_DIR")):
        if not root:
            continue
        for candidate in (Path(root), Path(root) / preset.folder):
            if (candidate / "train.tsv").exists():
                return candidate
        if root == data_dir:
            raise DataError(f"--data_dir {data_dir}: no train.tsv there or in {Path(data_dir) / preset.folder}")
    return None


def read_glue_tsv(path: Path, preset: GluePreset) -> list[Example]:
    """One official GLUE TSV file as examples."""
    names = list(preset.column_names) if preset.column_names else None
    return to_examples(read_table(path, names), list(preset.text_columns), preset.label_column, preset.label_rule())


def load_glue(preset: GluePreset, data_dir: Optional[str] = None) -> dict[str, list[Example]]:
    """``{"train": [...], "dev": [...]}`` (MNLI: ``dev_matched`` and ``dev_mismatched``) of a GLUE task."""
    folder = resolve_task_dir(preset, data_dir)
    if folder is None:
        hint = (
            f"no local GLUE data for {preset.name}: pass --data_dir pointing at the GLUE TSVs "
            f"(a folder with {preset.folder}/train.tsv, or that task folder itself) or set $GLUE_DIR"
        )
        loaded = load_hub_dataset(HUB_DATASET, preset.name, hint)
        splits = {"train": "train", **{dev: preset.hub_split(dev) for dev in preset.dev_splits}}
        return {
            ours: to_examples(
                hub_table(loaded, f"{HUB_DATASET}/{preset.name}", theirs),
                list(preset.hub_columns),
                "label",
                preset.label_rule(stored_ids=not preset.task.is_regression),
            )
            for ours, theirs in splits.items()
        }
    splits = {}
    for split in ("train", *preset.dev_splits):
        path = folder / f"{split}.tsv"
        if not path.exists():
            raise DataError(f"{path}: missing (needed for {preset.name})")
        splits[split] = read_glue_tsv(path, preset)
    return splits
