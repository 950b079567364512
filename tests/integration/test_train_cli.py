"""launch/train.py end to end: the real deepspeed launcher with MiniLM on SST-2, and SIGKILL + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import GLUE_DIR, REPO_ROOT, _free_port, glue_task_dir, job_env, minilm_path
from xtc_ds.pipeline.io import read_jsonl

pytestmark = pytest.mark.slow
TRAIN = str(REPO_ROOT / "launch" / "train.py")


def _run(cmd, timeout=600, env=None):
    env = job_env() if env is None else env
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_deepspeed_launcher_minilm_sst2(tmp_path):
    glue_task_dir("SST-2")
    minilm_path()
    out = tmp_path / "run"
    common = [
        "--deepspeed_config",
        "ds_configs/ds_xtc.json",
        "--data_dir",
        str(GLUE_DIR),
        "--output_dir",
        str(out),
        "--max_train_samples",
        "256",
        "--max_eval_samples",
        "128",
        "--max_seq_length",
        "32",
        "--teacher_max_train_steps",
        "6",
        "--max_train_steps",
        "6",
        "--eval_steps",
        "3",
        "--save_steps",
        "3",
    ]
    launcher = ["deepspeed", "--master_port", str(_free_port()), TRAIN]
    _run(launcher + common)

    results = json.loads((out / "eval_results.json").read_text())
    assert results["task"] == "sst2" and results["teacher_training"]["steps"] == 6
    assert 0.0 <= results["final_dev"]["dev"]["accuracy"] <= 1.0
    assert results["student_best"]["step"] in (3, 6)
    weights = load_file(out / "final" / "model.safetensors")
    assert len([k for k in weights if k.startswith("bert.encoder.layer.")]) > 0
    assert max(int(k.split(".")[3]) for k in weights if k.startswith("bert.encoder.layer.")) == 2  # 3-layer student
    for name, tensor in weights.items():
        if (
            "attention.self.query.weight" in name
            or "intermediate.dense.weight" in name
            or "output.dense.weight" in name
        ):
            assert tensor.unique().numel() == 2, name
    embeddings = weights["bert.embeddings.word_embeddings.weight"]
    assert max(row.unique().numel() for row in embeddings[:500]) == 2
    assert (out / "final" / "xtc_compression.json").exists() and (out / "final" / "tokenizer.json").exists()
    assert (out / "student" / "checkpoints" / "latest").read_text().strip() == "global_step6"
    packed_bytes = (out / "packed" / "model.safetensors").stat().st_size
    assert packed_bytes * 10 < (out / "final" / "model.safetensors").stat().st_size
    assert abs(results["packed_dev"]["dev"]["accuracy"] - results["final_dev"]["dev"]["accuracy"]) <= 2 / 128
    alone = _run(
        [sys.executable, TRAIN, "--eval_packed", str(out / "packed"), "--data_dir", str(GLUE_DIR)]
        + ["--max_eval_samples", "128", "--max_seq_length", "32"]
    )
    assert json.loads(alone.stdout.strip().splitlines()[-1])["packed_dev"] == results["packed_dev"]

    _run(launcher + common + ["--resume_from_checkpoint", "latest"])  # both phases complete: resumes at the end
    log = read_jsonl(out / "student" / "train_log.jsonl")
    assert log[-1] == {"resumed_from": str(out / "student" / "checkpoints" / "global_step6"), "step": 6}


def _tiny_teacher(folder):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)


def _tiny_config(path, monitor_dir, stage=0):
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "zero_optimization": {"stage": stage},
        "csv_monitor": {"enabled": True, "output_path": str(monitor_dir), "job_name": "tiny"},
        "gradient_clipping": 1.0,
        "compression_training": {
            "layer_reduction": {
                "enabled": True,
                "module_name_prefix": "bert.encoder.layer",
                "teacher_layer": [1, 3],
                "other_module_name": ["bert.embeddings", "bert.pooler", "classifier"],
            },
            "weight_quantization": {
                "shared_parameters": {"enabled": True, "schedule_offset": 4, "quantize_weight_in_forward": True},
                "different_groups": {
                    "wq1": {
                        "params": {"start_bits": 8, "target_bits": 1, "quantization_period": 3},
                        "modules": ["attention.self", "intermediate", "output.dense"],
                    }
                },
            },
            "activation_quantization": {
                "shared_parameters": {"enabled": True, "schedule_offset": 0, "range_calibration": "static"},
                "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["intermediate"]}},
            },
            "knowledge_distillation": {"enabled": True},
        },
    }
    path.write_text(json.dumps(config))


def _losses(log):
    return {r["step"]: r["loss"] for r in log if "loss" in r}


@pytest.mark.parametrize(
    "ranks, stage, total",
    [(1, 0, 200), (2, 2, 100)],
    ids=["one-process", "two-ranks-zero2"],
)
def test_sigkill_then_resume_continues_step_for_step(tmp_path, ranks, stage, total):
    """Kill the whole job (all ranks) with SIGKILL, resume: same step, data, RNG, optimizer and schedule."""
    glue_task_dir("SST-2")
    teacher, config = tmp_path / "teacher", tmp_path / "ds.json"
    _tiny_teacher(teacher)
    _tiny_config(config, tmp_path / "monitor", stage)
    launcher = [sys.executable]
    env = job_env()
    if ranks > 1:  # the deepspeed launcher, one OpenMP thread per rank
        launcher = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(_free_port())]
        env = job_env(OMP_NUM_THREADS="1")

    def cmd(out, *extra):
        return [
            *launcher,
            TRAIN,
            "--deepspeed_config",
            str(config),
            "--data_dir",
            str(GLUE_DIR),
            "--output_dir",
            str(out),
            "--teacher_model",
            str(teacher),
            "--max_train_samples",
            "400",
            "--max_eval_samples",
            "64",
            "--max_seq_length",
            "16",
            "--max_train_steps",
            str(total),
            "--eval_steps",
            "50",
            "--save_steps",
            "5",
            "--learning_rate",
            "1e-3",
            *extra,
        ]

    _run(cmd(tmp_path / "reference"), env=env)
    reference = _losses(read_jsonl(tmp_path / "reference" / "student" / "train_log.jsonl"))
    assert sorted(reference) == list(range(1, total + 1))
    monitor = {p.name for p in (tmp_path / "monitor").rglob("*.csv")}
    assert any("train_step_loss" in name for name in monitor) and any("accuracy" in name for name in monitor), monitor

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(out),
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = out / "student" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and int(latest.read_text().strip()[11:] or 0) >= 10:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    checkpoint_step = int(latest.read_text().strip()[11:])
    logged_before = max(_losses(read_jsonl(out / "student" / "train_log.jsonl")))
    assert 10 <= checkpoint_step <= logged_before < total

    _run(cmd(out, "--resume_from_checkpoint", "latest"), env=env)
    log = read_jsonl(out / "student" / "train_log.jsonl")
    resumed_at = [r for r in log if "resumed_from" in r]
    assert resumed_at == [
        {
            "resumed_from": str(out / "student" / "checkpoints" / f"global_step{checkpoint_step}"),
            "step": checkpoint_step,
        }
    ]
    after = _losses(log[log.index(resumed_at[0]) :])
    assert sorted(after) == list(range(checkpoint_step + 1, total + 1))
    for step, loss in after.items():  # same data, RNG, optimizer, LR and compression schedule as never stopping
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    results = json.loads((out / "eval_results.json").read_text())
    assert results["student_best"]["steps"] == total
    if ranks > 1:  # ZeRO-2 partitions written by 2 ranks cannot be resumed by 1: a clear error, not DeepSpeed's
        alone = [sys.executable, *cmd(out, "--resume_from_checkpoint", "latest")[len(launcher) :]]
        result = subprocess.run(alone, env=job_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "written with ZeRO stage 2 on 2 process(es)" in result.stderr
