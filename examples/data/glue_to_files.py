"""Write a GLUE task's train and dev TSVs as CSV or JSON Lines files with plain column names (``sentence`` or
``sentence1``/``sentence2``, ``label``), the shape of a user's own dataset for ``--train_file``.

Usage: ``python examples/data/glue_to_files.py --task_name mrpc --data_dir ../shared/data/glue --format csv
--output_dir out/data/mrpc`` writes ``train.csv`` and ``dev.csv`` (labels as GLUE's class names; STS-B scores
as floats). It refuses to replace files it finds there. ``--max_train_rows N`` keeps a seeded random sample of N
training rows (in their original order), e.g. to make SST-2 a "new task of a few thousand rows".
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import datasets

from xtc_ds.recipes.classification.data import get_task, load_glue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task_name", required=True)
    parser.add_argument("--data_dir", required=True, help="GLUE root or task folder with train.tsv and dev.tsv")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_train_rows", type=int, default=None, help="keep a random sample of this many rows")
    parser.add_argument("--seed", type=int, default=42, help="seed of the --max_train_rows sample")
    args = parser.parse_args()
    preset = get_task(args.task_name)
    task = preset.task
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in load_glue(preset, args.data_dir).items():
        if split == "train" and args.max_train_rows is not None and args.max_train_rows < len(examples):
            keep = sorted(random.Random(args.seed).sample(range(len(examples)), args.max_train_rows))
            examples = [examples[i] for i in keep]
        path = out / f"{split}.{args.format}"
        if path.exists():
            raise SystemExit(f"{path}: exists; choose another --output_dir")
        names = ["sentence1", "sentence2"] if task.pair else ["sentence"]
        rows = {names[0]: [e.text_a for e in examples]}
        if task.pair:
            rows[names[1]] = [e.text_b for e in examples]
        rows["label"] = [e.label if task.is_regression else task.label_names[e.label] for e in examples]
        table = datasets.Dataset.from_dict(rows)
        if args.format == "csv":
            table.to_csv(str(path), index=False)
        else:
            table.to_json(str(path), lines=True)
        print(f"{path}: {len(table)} rows")


if __name__ == "__main__":
    main()
