"""launch/train.py on data of the user's own, through the real deepspeed launcher: a CSV with four string labels
(teacher -> 1-bit student -> packed -> predictions.tsv) and a JSON Lines regression file."""

import importlib.util
import json
import random
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO_ROOT, _free_port, assert_loss_fell, job_env
from models import save_tiny_teacher
from text_files import TOPICS, headline, news_csv, write_csv
from xtc_ds.files import read_jsonl

pytestmark = pytest.mark.slow
TRAIN = str(REPO_ROOT / "launch" / "train.py")


def _run(cmd):
    result = subprocess.run(cmd, env=job_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _common(config, base, out):
    """60 steps at high rates: enough for the tiny random-init model to learn the topic words (both files below
    are labelled by them), so the teacher and the 1-bit student clear the majority-class baseline by far."""
    return [
        *("--deepspeed_config", config, "--model_name_or_path", str(base), "--output_dir", str(out)),
        *("--max_seq_length", "16", "--teacher_max_train_steps", "60", "--max_train_steps", "60"),
        *("--teacher_learning_rate", "3e-3", "--learning_rate", "2e-3"),
        *("--eval_steps", "20", "--save_steps", "30", "--per_device_train_batch_size", "16"),
    ]


def _assert_the_student_learned(out):
    """Its KD loss falls (measured here: the last 10 steps' mean is 0.73 of the first 10's on the CSV, 0.51 on the
    JSON regression)."""
    losses = [record["loss"] for record in read_jsonl(out / "student" / "train_log.jsonl") if "loss" in record]
    assert_loss_fell(losses, steps=60, window=10)


def _small_config(tmp_path):
    """ds_xtc_1bit.json as shipped, with the micro batch left to the flag."""
    config = json.loads((REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json").read_text())
    del config["train_micro_batch_size_per_gpu"]
    path = tmp_path / "ds_xtc_1bit.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_csv_with_four_string_labels_end_to_end(tmp_path):
    data = tmp_path / "news"
    data.mkdir()
    topics = sorted(TOPICS)
    train, dev = news_csv(data)
    rng = random.Random(1)
    test = write_csv(data / "test.csv", [(i, headline(rng, t)) for i, t in enumerate(topics * 2)], ("id", "text"))
    base, out = tmp_path / "base", tmp_path / "run"
    save_tiny_teacher(base, layers=6)
    flags = _common(_small_config(tmp_path), base, out)
    flags += ["--train_file", train, "--validation_file", dev, "--test_file", test, "--do_predict"]
    _run(["deepspeed", "--master_port", str(_free_port()), TRAIN, *flags])

    results = json.loads((out / "eval_results.json").read_text())
    assert results["task"] == "news" and results["teacher_training"]["steps"] == 60
    # four topics, 4 dev rows each: the majority class scores 0.25; measured here: teacher and student 1.0, the
    # untrained 1-bit copy of the teacher 0.625
    assert results["teacher_dev"]["dev"]["accuracy"] >= 0.75
    assert results["final_dev"]["dev"]["accuracy"] >= 0.875 and results["packed_dev"]["dev"]["accuracy"] >= 0.875
    _assert_the_student_learned(out)
    assert results["augmentation"]["variants_per_text"] == 20 and results["augmentation"]["rows"] > 96  # default
    assert set(results["packed_dev"]["dev"]) == {"accuracy", "macro_f1"}
    assert abs(results["packed_dev"]["dev"]["accuracy"] - results["final_dev"]["dev"]["accuracy"]) <= 1 / 16
    for folder in ("final", "packed"):
        config = json.loads((out / folder / "config.json").read_text())
        assert config["id2label"] == {str(i): name for i, name in enumerate(topics)}, folder
    weights = load_file(out / "final" / "model.safetensors")
    assert weights["bert.encoder.layer.0.intermediate.dense.weight"].unique().numel() == 2  # 1-bit
    lines = (out / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 9
    assert {line.split("\t")[1] for line in lines[1:]} <= set(topics)
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(8)]

    alone = tmp_path / "alone"
    result = _run(
        [sys.executable, TRAIN, "--eval_packed", str(out / "packed"), "--train_file", train]
        + ["--validation_file", dev, "--test_file", test, "--do_predict", "--output_dir", str(alone)]
        + ["--max_seq_length", "16"]
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["packed_dev"] == results["packed_dev"]
    assert (alone / "predictions.tsv").read_text() == (out / "predictions.tsv").read_text()
    again = subprocess.run(
        [sys.executable, TRAIN, "--eval_packed", str(out / "packed"), "--train_file", train]
        + ["--validation_file", dev, "--test_file", test, "--do_predict", "--output_dir", str(alone)],
        env=job_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 2 and "predictions.tsv: exists; pass --overwrite_output_dir" in again.stderr

    # with onnxruntime installed the run also writes onnx/ and scores it; --eval_onnx reproduces that score
    if importlib.util.find_spec("onnxruntime") is None:
        return
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "tokenizer_config.json").is_file()
    assert abs(results["onnx_dev"]["dev"]["accuracy"] - results["packed_dev"]["dev"]["accuracy"]) <= 1 / 16
    result = _run(
        [sys.executable, TRAIN, "--eval_onnx", str(out / "onnx"), "--train_file", train]
        + ["--validation_file", dev, "--max_seq_length", "16"]
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["onnx_dev"] == results["onnx_dev"]


def test_jsonl_regression_end_to_end(tmp_path):
    rng = random.Random(1)

    topics = sorted(TOPICS)

    def record():  # the score is the first headline's topic (0-3) plus noise: learnable from its words
        first, second = rng.choice(topics), rng.choice(topics)
        score = topics.index(first) + rng.random() / 2
        return {"sentence1": headline(rng, first), "sentence2": headline(rng, second), "label": score}

    train, dev = tmp_path / "pairs_train.jsonl", tmp_path / "pairs_dev.jsonl"
    train.write_text("".join(json.dumps(record()) + "\n" for _ in range(96)), encoding="utf-8")
    dev.write_text("".join(json.dumps(record()) + "\n" for _ in range(24)), encoding="utf-8")
    base, out = tmp_path / "base", tmp_path / "run"
    save_tiny_teacher(base, layers=6)
    flags = _common(_small_config(tmp_path), base, out)
    flags += ["--train_file", str(train), "--validation_file", str(dev), "--metric_name", "spearman"]
    _run(["deepspeed", "--master_port", str(_free_port()), TRAIN, *flags])

    results = json.loads((out / "eval_results.json").read_text())
    assert results["task"] == "pairs_train"
    packed = results["packed_dev"]["dev"]
    assert set(packed) == {"pearson", "spearmanr"}
    # uncorrelated predictions score about 0 (measured here: teacher 0.91, packed student 0.93 Pearson)
    assert results["teacher_dev"]["dev"]["pearson"] >= 0.5 and packed["pearson"] >= 0.4
    _assert_the_student_learned(out)
    best = results["student_best"]
    assert best["score"] == pytest.approx(best["metrics"]["dev"]["spearmanr"])  # --metric_name spearman
    config = json.loads((out / "packed" / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
