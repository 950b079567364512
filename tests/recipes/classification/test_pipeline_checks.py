"""Flags and config are checked before training: batch sizes, output directory, --help."""

import json

import pytest

from conftest import REPO_ROOT
from xtc_ds import ConfigError, load_compression_config
from xtc_ds.errors import OutputDirError
from xtc_ds.files import read_jsonl, replace_dir_atomic, write_json_atomic
from xtc_ds.recipes.classification.args import (
    FINE_TUNE_LEARNING_RATE,
    LONG_LOW_BIT_LEARNING_RATE,
    LONG_STUDENT_STEPS,
    LOW_BIT_LEARNING_RATE,
    build_parser,
    parse_args,
    resolve_learning_rates,
)
from xtc_ds.recipes.classification.io import check_output_dir, prepare_output_dir
from xtc_ds.recipes.classification.run import _batch_config

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
        "--augment",
        "--augment_prob",
        "--augment_candidates",
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


def test_missing_config_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    assert exit_info.value.code == 2
    assert "--deepspeed_config is required" in capsys.readouterr().err


def _prepare(args):
    check_output_dir(args)
    return prepare_output_dir(args)


def test_output_dir_is_not_overwritten_without_the_flag(tmp_path):
    (tmp_path / "eval_results.json").write_text("{}")
    with pytest.raises(OutputDirError, match="holds no earlier run; pass --overwrite_output_dir"):
        _prepare(_args("--output_dir", str(tmp_path)))
    assert (tmp_path / "eval_results.json").exists()
    _prepare(_args("--output_dir", str(tmp_path), "--overwrite_output_dir"))
    assert not (tmp_path / "eval_results.json").exists()
    (tmp_path / "keep").write_text("x")
    _prepare(_args("--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"))
    assert (tmp_path / "keep").exists()


def test_default_output_dir_is_named_after_task_and_config():
    args = _args("--task_name", "stsb")
    check_output_dir(args)
    assert args.output_dir == "out/stsb-ds_xtc"


def test_a_run_recorded_before_the_data_flags_existed_is_continued(tmp_path):
    new_flags = ("train_file", "validation_file", "dataset_name", "dataset_config_name", "text_column_names")
    recorded = {k: v for k, v in vars(_args("--output_dir", str(tmp_path))).items() if k not in new_flags}
    del recorded["label_column_name"], recorded["do_regression"]
    write_json_atomic(tmp_path / "args.json", recorded)
    args = _args("--output_dir", str(tmp_path))
    check_output_dir(args)
    assert args.resume_from_checkpoint == "latest"


def test_an_earlier_run_of_the_same_job_is_continued(tmp_path):
    first = _args("--output_dir", str(tmp_path))
    write_json_atomic(tmp_path / "args.json", vars(first))
    args = _args("--output_dir", str(tmp_path))
    check_output_dir(args)
    assert args.resume_from_checkpoint == "latest"
    other = _args("--output_dir", str(tmp_path), "--seed", "7")
    with pytest.raises(OutputDirError, match="holds a run with --seed 42 \\(this one: 7\\)"):
        check_output_dir(other)


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
        ["--augment", "-1"],
        ["--augment_prob", "0"],
        ["--augment_prob", "1.2"],
        ["--augment_candidates", "0"],
    ],
)
def test_parse_rejects_bad_values(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--deepspeed_config", CONFIG, *flags])
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


def test_every_numeric_flag_is_range_checked():
    from xtc_ds.recipes.classification.args import _RANGES

    numeric = {a.dest for a in build_parser()._actions if a.type in (int, float)} - {"local_rank"}
    assert numeric == set(_RANGES)


@pytest.mark.parametrize(
    "config, short, long",
    [
        ("ds_xtc.json", LOW_BIT_LEARNING_RATE, LONG_LOW_BIT_LEARNING_RATE),
        ("ds_xtc_1bit.json", LOW_BIT_LEARNING_RATE, LONG_LOW_BIT_LEARNING_RATE),
        ("ds_xtc_zero3.json", LOW_BIT_LEARNING_RATE, LONG_LOW_BIT_LEARNING_RATE),
        ("ds_xtc_2bit.json", LOW_BIT_LEARNING_RATE, LONG_LOW_BIT_LEARNING_RATE),
        ("ds_layer_reduction.json", FINE_TUNE_LEARNING_RATE, FINE_TUNE_LEARNING_RATE),
    ],
)
def test_default_learning_rates_follow_the_weight_bits_and_the_budget(config, short, long):
    path = str(REPO_ROOT / "ds_configs" / config)
    for steps, student in ((LONG_STUDENT_STEPS - 1, short), (LONG_STUDENT_STEPS, long)):
        args = parse_args(["--deepspeed_config", path])
        resolve_learning_rates(args, load_compression_config(path), steps)
        assert (args.learning_rate, args.teacher_learning_rate) == (student, FINE_TUNE_LEARNING_RATE)


def test_given_learning_rates_are_kept():
    compression = load_compression_config(CONFIG)
    args = _args("--learning_rate", "1e-4")
    resolve_learning_rates(args, compression, 100)
    assert (args.learning_rate, args.teacher_learning_rate) == (1e-4, 1e-4)  # the teacher follows a given rate
    args = _args("--teacher_learning_rate", "3e-5")
    resolve_learning_rates(args, compression, 100)
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
    from xtc_ds.checkpoint_layout import CheckpointLayoutError, resume_route

    if route is not None:
        assert resume_route(*saved, partitioned, *here) == route
        return
    with pytest.raises(CheckpointLayoutError) as err:
        resume_route(*saved, partitioned, *here)
    assert f"ZeRO stage {saved[0]} on {saved[1]}" in str(err.value) and "zero_to_fp32" in str(err.value)


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    """A saved 6-layer BERT folder (ds_xtc.json keeps its layers 1, 3, 5): the architecture the checks read."""
    from conftest import tiny_bert

    folder = tmp_path_factory.mktemp("teacher")
    tiny_bert(layers=6, hidden=32).save_pretrained(folder)
    return folder


def _section_edit(tmp_path, edit):
    config = json.loads((REPO_ROOT / "ds_configs" / "ds_xtc.json").read_text())
    edit(config["compression_training"])
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s["weight_quantization"]["shared_parameters"].update(quantize_groups=7),
            "quantize_groups: 7 \\(does not divide",
        ),
        (
            lambda s: s["layer_reduction"].update(teacher_layer=[0, 9, 2]),
            "teacher_layer\\[1\\]: 9 \\(the teacher has 6",
        ),
        (
            lambda s: s["knowledge_distillation"].update(attention_layer_map=[0, 7, 1]),
            "attention_layer_map: 7 \\(the teacher returns only 6",
        ),
    ],
)
def test_model_dependent_config_errors_come_before_any_training(tmp_path, tiny_teacher_dir, edit, message):
    """Raised by main() before the process group starts, so before any teacher step (no data is read either)."""
    from xtc_ds.recipes.classification.run import main

    config = _section_edit(tmp_path, edit)
    flags = ["--deepspeed_config", config, "--model_name_or_path", str(tiny_teacher_dir)]
    with pytest.raises(ConfigError, match=message):
        main([*flags, "--output_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path / "no_data")])
    assert not (tmp_path / "out").exists()


def test_a_config_that_compresses_nothing_is_refused_unless_asked(tmp_path, tiny_teacher_dir):
    from xtc_ds.errors import DataError
    from xtc_ds.recipes.classification.run import main

    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"train_batch_size": 32}))
    flags = ["--deepspeed_config", str(path), "--model_name_or_path", str(tiny_teacher_dir)]
    flags += ["--data_dir", str(tmp_path / "no_data"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match="compress nothing.*--allow_uncompressed"):
        main(flags)
    with pytest.raises(DataError):  # accepted: it gets as far as the (missing) data
        main([*flags, "--allow_uncompressed"])


def test_eval_packed_on_a_missing_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    from conftest import GLUE_DIR, glue_task_dir
    from xtc_ds.recipes.classification.run import cli

    glue_task_dir("SST-2")
    flags = ["--eval_packed", str(tmp_path / "nope"), "--data_dir", str(GLUE_DIR), "--max_eval_samples", "4"]
    monkeypatch.setattr(sys, "argv", ["launch/train.py", *flags])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'nope' / 'config.json'}: missing (not an exported folder)"
    )


def test_a_deleted_best_folder_is_named(tmp_path):
    from xtc_ds.errors import ModelError
    from xtc_ds.recipes.classification.data import get_task
    from xtc_ds.recipes.classification.models import load_model

    with pytest.raises(ModelError, match=f"{tmp_path / 'teacher' / 'best'}: no config.json"):
        load_model(str(tmp_path / "teacher" / "best"), get_task("sst2").task, eager=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="broken: cannot load the model"):
        load_model(str(tmp_path / "broken"), get_task("sst2").task, eager=False)


def test_flags_data_config_and_output_dir_are_checked_before_deepspeed_starts(tmp_path, monkeypatch):
    from xtc_ds.recipes.classification import run

    def started(**_):
        raise AssertionError("the process group started before the checks")

    monkeypatch.setattr(run, "init_distributed", started)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="holds no earlier run"):
        run.main(["--deepspeed_config", CONFIG, "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError):
        run.main(["--deepspeed_config", str(REPO_ROOT / "README.md"), "--output_dir", str(tmp_path / "new")])


def test_augmentation_without_distillation_is_refused_before_deepspeed_starts(tmp_path, tiny_teacher_dir, monkeypatch):
    """Variants have no labels: a config without KD could not learn them, so --augment is an error, not a no-op."""
    from text_files import news_csv
    from xtc_ds.recipes.classification import run

    def started(**_):
        raise AssertionError("the process group started before the checks")

    monkeypatch.setattr(run, "init_distributed", started)
    train, dev = news_csv(tmp_path)
    config = _section_edit(tmp_path, lambda s: s["knowledge_distillation"].update(enabled=False))
    flags = ["--deepspeed_config", config, "--model_name_or_path", str(tiny_teacher_dir), "--train_file", train]
    flags += ["--validation_file", dev, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match="--augment 4: augmented rows have no labels.*knowledge_distillation"):
        run.main([*flags, "--augment", "4"])
    assert not (tmp_path / "out").exists()


def test_the_plan_augments_a_small_set_for_the_student_only(tmp_path, monkeypatch, capsys):
    """96 rows: 20 variants each for the student, whose budget covers a fraction of them; the teacher keeps its own
    budget over the labelled rows (at most 5 epochs)."""
    from models import save_tiny_teacher
    from text_files import news_csv
    from xtc_ds.recipes.classification import run

    class Planned(Exception):
        pass

    def started(**_):
        raise Planned

    monkeypatch.setattr(run, "init_distributed", started)
    train, dev = news_csv(tmp_path)
    save_tiny_teacher(tmp_path / "base")  # with MiniLM's tokenizer, whose words the variants draw on
    flags = ["--deepspeed_config", str(REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json"), "--train_file", train]
    flags += [
        "--validation_file",
        dev,
        "--model_name_or_path",
        str(tmp_path / "base"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(Planned):
        run.main(flags)
    plan = capsys.readouterr().err
    assert "augmentation: 20 variants per text (auto: 96 training rows, under 10000; candidates from embedding" in plan
    assert "teacher: 5 epochs (budget)" in plan and "student: 20 epochs (budget)" in plan


def test_a_teacher_fine_tuned_on_other_labels_is_refused(tiny_teacher_dir):
    from transformers import AutoConfig

    from xtc_ds.errors import ModelError
    from xtc_ds.recipes.classification.data import get_task
    from xtc_ds.recipes.classification.data.task import dataset_task
    from xtc_ds.recipes.classification.models import check_model_labels

    config = AutoConfig.from_pretrained(tiny_teacher_dir)
    check_model_labels("base", config, get_task("mnli").task)  # LABEL_0, LABEL_1: a base model names no classes
    config.update({"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}})
    check_model_labels("teacher", config, dataset_task("reviews", ("neg", "pos"), False, None))
    with pytest.raises(
        ModelError,
        match=r"teacher/config.json: the model's labels \['neg', 'pos'\] differ from the data's \['0', '1'\]",
    ):
        check_model_labels("teacher", config, get_task("sst2").task)


def test_eval_onnx_on_a_packed_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    from conftest import GLUE_DIR, glue_task_dir
    from xtc_ds.recipes.classification.run import cli

    glue_task_dir("SST-2")
    (tmp_path / "packed").mkdir()
    flags = ["--eval_onnx", str(tmp_path / "packed"), "--data_dir", str(GLUE_DIR), "--max_eval_samples", "4"]
    monkeypatch.setattr(sys, "argv", ["launch/train.py", *flags])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'packed'}: not an ONNX export (no xtc_onnx.json and model.onnx); see export_onnx"
    )
    monkeypatch.setattr(sys, "argv", ["launch/train.py", *flags, "--eval_packed", str(tmp_path / "packed")])
    with pytest.raises(SystemExit):
        cli()
    assert "--eval_packed and --eval_onnx: evaluate one exported folder per run" in capsys.readouterr().err
