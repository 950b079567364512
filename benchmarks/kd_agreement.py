"""How much of a student's gap is generalization: its agreement with the teacher on training rows and on dev rows.

Usage: ``python benchmarks/kd_agreement.py --teacher RUN/teacher/best --student RUN/packed --train_file train.csv
--validation_file dev.csv [--rows 600] [--label_column label]``

A student that agrees with its teacher on the training rows far more often than on dev rows has learned the
teacher's answers on the training texts (and their augmented variants) rather than its behaviour on new texts;
more distillation steps over the same texts do not close that kind of gap. Reads CSV, TSV or JSON files with the
``datasets`` library (the text columns are the columns other than the label, one or two); the student is a packed
folder (``xtc_ds.load_packed``), the teacher a Hugging Face folder.
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import xtc_ds

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def _rows(path: str, count: int, label: str) -> tuple[list[list[str]], list[int]]:
    suffix = path[path.rfind(".") :]
    extra = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    table = load_dataset(_BUILDERS[suffix], data_files=path, split="train", **extra)
    texts = [name for name in table.column_names if name != label][:2]
    table = table.select(range(min(count, len(table))))
    return [table[name] for name in texts], [int(value) for value in table[label]]


def _classes(model: torch.nn.Module, tokenizer, texts: list[list[str]], batch: int = 64) -> torch.Tensor:
    out = []
    for start in range(0, len(texts[0]), batch):
        chunk = [column[start : start + batch] for column in texts]
        encoded = tokenizer(*chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**encoded).logits.argmax(-1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's Hugging Face folder")
    parser.add_argument("--student", required=True, help="the student's packed folder")
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--validation_file", required=True)
    parser.add_argument("--rows", type=int, default=600, help="training rows to compare on (the first N)")
    parser.add_argument("--label_column", default="label")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
    student = xtc_ds.load_packed(args.student).eval()
    print(f"{'rows':<16}{'teacher':>9}{'student':>9}{'agreement':>11}")
    for split, path, count in (("train", args.train_file, args.rows), ("dev", args.validation_file, 10**9)):
        texts, labels = _rows(path, count, args.label_column)
        truth = torch.tensor(labels)
        taught, learned = _classes(teacher, tokenizer, texts), _classes(student, tokenizer, texts)
        name = f"{split} ({len(labels)})"
        accuracy = [
            (taught == truth).float().mean(),
            (learned == truth).float().mean(),
            (taught == learned).float().mean(),
        ]
        print(f"{name:<16}" + "".join(f"{100 * value:>{width}.1f}" for value, width in zip(accuracy, (9, 9, 11))))


if __name__ == "__main__":
    main()
