"""The XTC text-classification recipe behind ``launch/train.py``: flags, data and plan checked before anything
starts, then teacher -> compressed student with KD -> clean, save, predict, report (:mod:`.phases`)."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from xtc_ds._log import announce, is_rank_zero
from xtc_ds.augment import AugmentedEdits, Augmenter, AugmentSettings, PaddedRows
from xtc_ds.config import SECTION, CompressionConfig, ConfigError, load_compression_config, load_deepspeed_config
from xtc_ds.distributed import (
    init_distributed,
    map_mpi_environment,
    rank_and_world,
    rank_zero_decides,
    single_process_defaults,
)
from xtc_ds.errors import OutputDirError, exit_on_user_error
from xtc_ds.export import load_packed
from xtc_ds.files import append_jsonl, write_json_atomic
from xtc_ds.onnx_export import OnnxClassifier
from xtc_ds.recipes.classification.args import parse_args, resolve_learning_rates
from xtc_ds.recipes.classification.data import TaskData, TaskSpec, encode, load_task_data
from xtc_ds.recipes.classification.finish import EXIT_LATE_FAILURE, Outputs, finish, plan_outputs, write_run_report
from xtc_ds.recipes.classification.io import AUGMENT_DIR, check_output_dir, prepare_output_dir
from xtc_ds.recipes.classification.models import check_against_model, check_model_labels, default_model_path
from xtc_ds.recipes.classification.phases import kd_needs_eager, total_steps, train_student, train_teacher
from xtc_ds.recipes.classification.plan import (
    SEQ_CAP,
    AugmentPlan,
    augment_plan,
    augment_seconds,
    describe,
    eval_every,
    eval_seq_length,
    model_cost,
    phase_plan,
    sample_rows,
    token_lengths,
    train_seq_length,
)
from xtc_ds.recipes.classification.predictions import PREDICTIONS_FILE, write_predictions
from xtc_ds.recipes.classification.settings import RunConfig
from xtc_ds.recipes.classification.summary import summary
from xtc_ds.recipes.classification.trainer import evaluate

__all__ = ["main", "cli"]


def _batch_config(ds_config: dict[str, Any], args: Any, world_size: int) -> dict[str, Any]:
    """Reconcile ``--per_device_train_batch_size`` with the DeepSpeed config before any training."""
    ds_config = copy.deepcopy(ds_config)
    source = args.deepspeed_config
    configured = ds_config.get("train_micro_batch_size_per_gpu")
    flag = args.per_device_train_batch_size
    if flag is not None and configured is not None and flag != configured:
        raise ConfigError(
            f"{source}: train_micro_batch_size_per_gpu is {configured} but --per_device_train_batch_size is {flag}; "
            "make them agree or drop the flag"
        )
    micro = configured or flag or 32
    accum = ds_config.get("gradient_accumulation_steps", 1)
    total = ds_config.get("train_batch_size")
    if total is not None and total != micro * accum * world_size:
        raise ConfigError(
            f"{source}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x {world_size} processes = {micro * accum * world_size}"
        )
    ds_config["train_micro_batch_size_per_gpu"] = micro
    ds_config["gradient_accumulation_steps"] = accum
    ds_config["train_batch_size"] = micro * accum * world_size
    return ds_config


def _token_lengths(rows: list, tokenizer: Any, task: TaskSpec) -> torch.Tensor:
    texts_b = [row.text_b for row in rows] if task.pair else None
    return token_lengths([row.text_a for row in rows], texts_b, tokenizer)


def _eval_seq_length(
    examples: dict[str, list], test: Optional[list], tokenizer: Any, task: TaskSpec, model_positions: int
) -> int:
    """The longest dev (and test) example, up to the cap: what evaluation and predictions are encoded to."""
    rows = [row for split, split_rows in examples.items() if split != "train" for row in split_rows] + (test or [])
    return eval_seq_length(_token_lengths(rows, tokenizer, task), model_positions)


def _augmenter(args: Any, compression: CompressionConfig, rows: int, model_path: str, tokenizer: Any):
    """The augmentation plan (``args.augment`` filled in) and, where it is on, the augmenter that will run it.

    Raises:
        ConfigError: ``--augment`` asked for variants that nothing could learn (the config does not distil).
    """
    distils = compression.knowledge_distillation.enabled
    if args.augment and not distils:
        raise ConfigError(
            f"--augment {args.augment}: augmented rows have no labels and are learned from the teacher's outputs by "
            f"knowledge distillation, which {args.deepspeed_config} does not enable (set "
            f"{SECTION}.knowledge_distillation.enabled, or drop --augment)"
        )
    augment = augment_plan(rows, args.augment, distils)
    args.augment = augment.variants
    if not augment.variants:
        return augment, None
    settings = AugmentSettings(augment.variants, args.augment_prob, args.augment_candidates, args.seed)
    return augment, Augmenter(tokenizer, args.teacher_model or model_path, settings)


def _plan(
    args: Any,
    examples: dict[str, list],
    test: Optional[list],
    tokenizer: Any,
    hf_config: Any,
    student_layers: int,
    global_batch: int,
    augment: AugmentPlan,
    augmenter: Optional[Augmenter],
    outputs: Outputs,
) -> None:
    """Fill in the sequence lengths and epochs that flags left open (:mod:`.plan`); say the plan.

    A ``--max_train_steps``/``--teacher_max_train_steps`` flag is shown as the epochs it amounts to; the
    student's epochs count the augmented rows too.
    """
    train = examples["train"]
    lengths = _token_lengths([train[i] for i in sample_rows(len(train), args.seed)], tokenizer, args.task)
    auto = args.max_seq_length is None
    if auto:
        positions = hf_config.max_position_embeddings
        args.max_seq_length = train_seq_length(lengths, positions)
        args.eval_max_seq_length = _eval_seq_length(examples, test, tokenizer, args.task, positions)
    else:
        args.eval_max_seq_length = args.max_seq_length
    row_tokens = lengths.clamp(max=args.max_seq_length).double().mean().item()
    # the student's rows per training row, variants of each text of a pair (an estimate: repeats are dropped)
    copies = 1 + augment.variants * (1 + args.task.pair)
    phases = []
    for name, epochs_flag, steps_flag, layers, rows in (
        ("teacher", "teacher_num_train_epochs", "teacher_max_train_steps", None, len(train)),
        ("student", "num_train_epochs", "max_train_steps", student_layers, len(train) * copies),
    ):
        if name == "teacher" and args.teacher_model is not None:
            continue
        steps = getattr(args, steps_flag)
        epochs = getattr(args, epochs_flag) if steps is None else steps * global_batch / rows
        augmented = name == "student" and copies > 1  # the teacher learns the labelled rows only
        phase = phase_plan(name, row_tokens * rows, model_cost(hf_config, layers), epochs, augmented=augmented)
        if steps is None:
            setattr(args, epochs_flag, phase.epochs)
        phase_steps = total_steps(getattr(args, epochs_flag), steps, rows // global_batch)
        estimated = augmented and args.eval_steps is None
        phases.append(replace(phase, eval_steps=eval_every(phase_steps, args.eval_steps), eval_estimated=estimated))
    if augmenter is not None:
        cost = model_cost(hf_config)
        augment = replace(augment, seconds=augment_seconds(augmenter.kind, len(train), row_tokens, cost, copies - 1))
        augment = replace(augment, reason=f"{augment.reason}; candidates from {augmenter.kind.replace('_', ' ')}")
    lengths_used = (args.max_seq_length, args.eval_max_seq_length)
    device = get_accelerator().device_name()
    announce(describe(args.task.name, len(train), lengths_used, auto, phases, device, augment, outputs.line()))


def _augment(augmenter: Optional[Augmenter], train: dict[str, torch.Tensor], out: Path) -> Optional[AugmentedEdits]:
    """The variants of the training rows, cached in ``<output_dir>/augmented``: rank 0 computes them (or finds them
    there), then every rank reads them."""
    if augmenter is None:
        return None
    rows, folder = PaddedRows(train), out / AUGMENT_DIR
    made: list[AugmentedEdits] = []
    rank_zero_decides(lambda: made.append(augmenter(rows, folder)))  # a damaged cache ends every rank with its error
    return made[0] if made else augmenter(rows, folder, progress=False)


def _eval_exported(args: Any, data: TaskData) -> dict[str, Any]:
    """``--eval_packed DIR`` / ``--eval_onnx DIR``: dev metrics of an exported folder, printed and returned (and
    with ``--do_predict``, its predictions written to ``--output_dir``)."""
    from transformers import AutoTokenizer

    examples = _select(data.splits, args)
    if args.eval_onnx:
        folder, kind, model = args.eval_onnx, "onnx", OnnxClassifier(args.eval_onnx)
    else:
        folder, kind, model = args.eval_packed, "packed", load_packed(args.eval_packed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    length = args.max_seq_length
    if length is None:  # the dev sets' longest example, as a run evaluates them
        positions = getattr(model.config, "max_position_embeddings", SEQ_CAP)
        length = _eval_seq_length(examples, data.test, tokenizer, data.task, positions)
    dev = _encode_dev(examples, tokenizer, length, data.task)
    metrics = evaluate(model, dev, data.task, args.per_device_eval_batch_size, args.pad_to_max_length)
    results = {"task": data.task.name, f"{kind}_model": str(folder), f"{kind}_dev": metrics}
    if data.test is not None:
        test = encode(data.test, tokenizer, length, data.task)
        out = Path(args.output_dir)
        if (out / PREDICTIONS_FILE).exists() and not args.overwrite_output_dir:
            raise OutputDirError(
                f"{out / PREDICTIONS_FILE}: exists; pass --overwrite_output_dir to replace it or choose another "
                "--output_dir"
            )
        out.mkdir(parents=True, exist_ok=True)
        results["predictions"] = str(
            write_predictions(model, test, data.task, out, args.per_device_eval_batch_size, args.pad_to_max_length)
        )
    print(json.dumps(results))
    return results


def _select(examples: dict[str, list], args: Any) -> dict[str, list]:
    """Apply ``--max_train_samples`` / ``--max_eval_samples``."""
    return {
        split: rows[: args.max_train_samples if split == "train" else args.max_eval_samples]
        for split, rows in examples.items()
    }


def _encode_all(data: TaskData, examples: dict[str, list], args: Any, tokenizer: Any) -> dict[str, Any]:
    """Token tensors: ``train``, ``dev`` (split -> tensors) and, with ``--do_predict``, ``test``."""
    encoded = {
        "train": encode(examples["train"], tokenizer, args.max_seq_length, data.task),
        "dev": _encode_dev(examples, tokenizer, args.eval_max_seq_length, data.task),
    }
    if data.test is not None:
        encoded["test"] = encode(data.test, tokenizer, args.eval_max_seq_length, data.task)
    return encoded


def _encode_dev(examples: dict[str, list], tokenizer: Any, max_length: int, task: TaskSpec) -> dict[str, Any]:
    return {split: encode(rows, tokenizer, max_length, task) for split, rows in examples.items() if split != "train"}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the whole recipe; returns what it writes to ``eval_results.json`` (on rank 0)."""
    from transformers import AutoTokenizer

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("xtc_ds").setLevel(logging.INFO)  # xtc_ds's progress; other libraries' warnings only
    started = time.time()
    if args.eval_packed or args.eval_onnx:
        return _eval_exported(args, load_task_data(args))
    ds_full = load_deepspeed_config(args.deepspeed_config)
    compression = load_compression_config(ds_full)  # every config error surfaces here, before any work
    if not compression.enabled and not args.allow_uncompressed:
        raise ConfigError(
            f"{args.deepspeed_config}: no {SECTION} section, or nothing enabled in it, so the run would compress "
            "nothing; add the section (see ds_configs/) or pass --allow_uncompressed for an uncompressed baseline"
        )
    check_output_dir(args)
    model_path = args.model_name_or_path or default_model_path()
    hf_config, student_layers = check_against_model(args.teacher_model or model_path, compression)
    task_data = load_task_data(args)  # missing or bad data, before anything is written
    task = args.task = task_data.task
    if args.teacher_model:
        check_model_labels(args.teacher_model, hf_config, task)
    examples = _select(task_data.splits, args)
    map_mpi_environment()  # mpirun's variables first: a PMIx-only launch is not a one-process job
    single_process_defaults()
    ds_full = _batch_config(ds_full, args, int(os.environ["WORLD_SIZE"]))
    tokenizer = AutoTokenizer.from_pretrained(args.teacher_model or model_path)
    augment, augmenter = _augmenter(args, compression, len(examples["train"]), model_path, tokenizer)
    global_batch = ds_full["train_batch_size"]
    outputs = plan_outputs(predictions=task_data.test is not None)
    _plan(
        args, examples, task_data.test, tokenizer, hf_config, student_layers, global_batch, augment, augmenter, outputs
    )
    student_rows = len(examples["train"]) * (1 + augment.variants)
    student_steps = total_steps(args.num_train_epochs, args.max_train_steps, student_rows // global_batch)
    resolve_learning_rates(args, compression, student_steps)
    init_distributed(timeout=timedelta(seconds=args.dist_timeout_s))  # DeepSpeed starts only now
    _, world = rank_and_world()
    ds_teacher = {**ds_full, SECTION: {}}  # the teacher is fine-tuned uncompressed, on purpose
    out = prepare_output_dir(args)
    run = RunConfig.from_args(args)
    data = _encode_all(task_data, examples, args, tokenizer)
    augmented = _augment(augmenter, data["train"], out)
    if is_rank_zero():
        if not (out / "args.json").exists():
            write_json_atomic(out / "args.json", {k: v for k, v in vars(args).items() if k != "task"})
        append_jsonl(
            out / "run_log.jsonl", {"started": started, "resume": args.resume_from_checkpoint, "world": world}
        )

    results: dict[str, Any] = {"task": task.name, "deepspeed_config": args.deepspeed_config, "world_size": world}
    if args.teacher_model is None:
        teacher_path, results["teacher_training"] = train_teacher(run, ds_teacher, data, tokenizer, model_path)
    else:
        teacher_path = args.teacher_model
    if augmented is not None:
        results["augmentation"] = {
            "variants_per_text": args.augment,
            "rows": len(augmented),
            "candidates_from": augmented.meta["candidates_from"],
            "seconds": augmented.meta["seconds"],
        }
    results.update(train_student(run, ds_full, compression, data, tokenizer, teacher_path, augmented))

    def save(made: dict[str, Any]) -> None:
        write_json_atomic(out / "eval_results.json", {**results, **made, "wall_time_s": time.time() - started})

    def finish_on_rank_zero() -> dict[str, Any]:
        save({})  # the training results, before any step that could fail
        made, failed = finish(run, compression, data, tokenizer, outputs, kd_needs_eager(compression), save)
        failed = write_run_report(out, failed)  # reads eval_results.json: the last step
        made.update({"failed_steps": failed} if failed else {})
        save(made)
        return made

    results.update(rank_zero_decides(finish_on_rank_zero))  # every rank learns what failed
    results["wall_time_s"] = time.time() - started
    if is_rank_zero():
        announce(summary(results, out, Path(teacher_path)))
    if dist.is_initialized():
        dist.barrier()
    return results


def cli() -> None:
    """Entry point of ``launch/train.py``: user errors (config, data, files, flags) end with one line and exit
    code 2; a run whose results are written but a later step failed ends with exit code 3, naming each step."""
    results = exit_on_user_error(main)
    failed = results.get("failed_steps", [])
    if failed:
        for line in failed:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(EXIT_LATE_FAILURE)
