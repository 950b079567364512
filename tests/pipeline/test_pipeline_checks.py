"""Flags and config are checked before training: batch sizes, output directory, --help."""

import argparse
import json

import pytest

from conftest import REPO_ROOT
from xtc_ds import ConfigError, load_compression_config
from xtc_ds.errors import OutputDirError
from xtc_ds.pipeline.args import (
    FINE_TUNE_LEARNING_RATE,
    LOW_BIT_LEARNING_RATE,
    build_parser,
    parse_args,
    resolve_learning_rates,
)
from xtc_ds.pipeline.io import read_jsonl, replace_dir_atomic, write_json_atomic
from xtc_ds.pipeline.run import _batch_config, _prepare_output_dir

CONFIG = str(REPO_ROOT / "ds_configs" / "ds_xtc.json")


def _args(*extra):
    return parse_args(["--deepspeed_config", CONFIG, *extra])


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in (
        "--task_name",
        "--data_dir",
        "--model_name_or_path",
        "--teacher_model",
        "--output_dir",
        "--max_seq_length",
        "--per_device_train_batch_size",
        "--learning_rate",
        "--weight_decay",
        "--num_train_epochs",
        "--max_train_steps",
        "--warmup_ratio",
        "--max_train_samples",
        "--max_eval_samples",
        "--eval_steps",
        "--save_steps",
        "--seed",
        "--resume_from_checkpoint",
        "--deepspeed_config",
        "--local_rank",
    ):
        assert flag in text, flag
    assert "sst2" in text and "rte" in text


def test_batch_size_flag_must_agree_with_config():
    args = _args("--per_device_train_batch_size", "16")
    with pytest.raises(
        ConfigError, match="train_micro_batch_size_per_gpu is 32 but --per_device_train_batch_size is 16"
    ):
        _batch_config({"train_micro_batch_size_per_gpu": 32}, args, 1)
    assert _batch_config({}, args, 2)["train_batch_size"] == 32
    assert (
        _batch_config({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2}, _args(), 2)[
            "train_batch_size"
        ]
        == 32
    )
    with pytest.raises(ConfigError, match=r"train_batch_size 32 != .* 2 processes = 64"):
        _batch_config({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 32}, _args(), 2)


def test_missing_config_flag_is_refused():
    with pytest.raises(SystemExit):
        parse_args([])


def test_output_dir_is_not_overwritten_without_the_flag(tmp_path):
    (tmp_path / "eval_results.json").write_text("{}")
    with pytest.raises(OutputDirError, match="--overwrite_output_dir"):
        _prepare_output_dir(_args("--output_dir", str(tmp_path)))
    assert (tmp_path / "eval_results.json").exists()
    _prepare_output_dir(_args("--output_dir", str(tmp_path), "--overwrite_output_dir"))
    assert not (tmp_path / "eval_results.json").exists()
    (tmp_path / "keep").write_text("x")
    _prepare_output_dir(_args("--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"))
    assert (tmp_path / "keep").exists()


def test_atomic_writes_keep_the_old_version_on_failure(tmp_path):
    target = tmp_path / "best"
    replace_dir_atomic(target, lambda d: (d / "a.txt").write_text("one"))

    def broken(folder):
        (folder / "a.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        replace_dir_atomic(target, broken)
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no temp folder left behind
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2')  # torn last line after a kill
    assert read_jsonl(tmp_path / "log.jsonl") == [{"step": 1}]


@pytest.mark.parametrize(
    "flags",
    [
        ["--eval_steps", "0"],
        ["--warmup_ratio", "1.5"],
        ["--warmup_ratio", "nan"],
        ["--task_name", "squad"],
        ["--learning_rate", "0"],
        ["--learning_rate", "inf"],
        ["--max_train_samples", "-5"],
        ["--max_eval_samples", "0"],
        ["--teacher_max_train_steps", "0"],
        ["--num_train_epochs", "nan"],
        ["--weight_decay", "-0.1"],
        ["--seed", "-1"],
        ["--dist_timeout_s", "0"],
    ],
)
def test_parse_rejects_bad_values(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--deepspeed_config", CONFIG, *flags])
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err
    assert isinstance(_args(), argparse.Namespace)


def test_every_numeric_flag_is_range_checked():
    from xtc_ds.pipeline.args import _RANGES

    numeric = {a.dest for a in build_parser()._actions if a.type in (int, float)} - {"local_rank"}
    assert numeric == set(_RANGES)


@pytest.mark.parametrize(
    "config, student",
    [
        ("ds_xtc.json", LOW_BIT_LEARNING_RATE),
        ("ds_xtc_1bit.json", LOW_BIT_LEARNING_RATE),
        ("ds_xtc_zero3.json", LOW_BIT_LEARNING_RATE),
        ("ds_xtc_2bit.json", LOW_BIT_LEARNING_RATE),
        ("ds_layer_reduction.json", FINE_TUNE_LEARNING_RATE),
    ],
)
def test_default_learning_rates_follow_the_weight_bits(config, student):
    path = str(REPO_ROOT / "ds_configs" / config)
    args = parse_args(["--deepspeed_config", path])
    resolve_learning_rates(args, load_compression_config(path))
    assert (args.learning_rate, args.teacher_learning_rate) == (student, FINE_TUNE_LEARNING_RATE)


def test_given_learning_rates_are_kept():
    compression = load_compression_config(CONFIG)
    args = _args("--learning_rate", "1e-4")
    resolve_learning_rates(args, compression)
    assert (args.learning_rate, args.teacher_learning_rate) == (1e-4, 1e-4)  # the teacher follows a given rate
    args = _args("--teacher_learning_rate", "3e-5")
    resolve_learning_rates(args, compression)
    assert (args.learning_rate, args.teacher_learning_rate) == (LOW_BIT_LEARNING_RATE, 3e-5)


@pytest.mark.parametrize(
    "saved, partitioned, here, route",
    [
        ((0, 2), False, (0, 1), "native"),  # one full optimizer state: any world size
        ((1, 2), True, (2, 2), "native"),  # stages 1 and 2 share the partition format
        ((2, 2), True, (1, 2), "native"),
        ((3, 2), True, (3, 2), "native"),
        ((0, 2), True, (0, 2), "native"),  # DeepSpeed's bf16 optimizer partitions at stage 0
        ((2, 2), True, (2, 1), "universal"),  # partitions are per world size: resharded
        ((1, 1), True, (2, 2), "universal"),
        ((3, 2), True, (3, 1), "universal"),
        ((0, 1), False, (2, 1), None),  # into ZeRO: no partitions to load
        ((2, 1), True, (0, 1), None),  # out of ZeRO
        ((2, 2), True, (3, 2), None),  # across stage 3's boundary
        ((0, 2), True, (0, 1), None),
    ],
)
def test_resume_routes(saved, partitioned, here, route):
    from xtc_ds.pipeline.checkpoint_layout import CheckpointLayoutError, resume_route

    if route is not None:
        assert resume_route(*saved, partitioned, *here) == route
        return
    with pytest.raises(CheckpointLayoutError) as err:
        resume_route(*saved, partitioned, *here)
    assert f"ZeRO stage {saved[0]} on {saved[1]}" in str(err.value) and "zero_to_fp32" in str(err.value)
