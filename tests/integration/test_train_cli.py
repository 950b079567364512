"""launch/train.py end to end: the real deepspeed launcher with MiniLM on SST-2, and SIGKILL + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import deepspeed
import pytest
from packaging.version import Version
from safetensors.torch import load_file

from conftest import GLUE_DIR, REPO_ROOT, _free_port, glue_task_dir, job_env, minilm_path
from models import save_tiny_teacher
from xtc_ds.distributed import SHM_DIR
from xtc_ds.files import read_jsonl

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
        "256",
        "--max_seq_length",
        "32",
        "--teacher_learning_rate",
        "3e-4",
        "--teacher_max_train_steps",
        "32",
        "--max_train_steps",
        "32",
        "--eval_steps",
        "16",
        "--save_steps",
        "16",
        "--save_total_limit",
        "1",
    ]
    port = _free_port()
    launcher = ["deepspeed", "--master_port", str(port), TRAIN]
    _run(launcher + common)

    results = json.loads((out / "eval_results.json").read_text())
    assert results["task"] == "sst2" and results["teacher_training"]["steps"] == 32
    assert json.loads((out / "student" / "eval_results.json").read_text()) == results["student_best"]
    # 256 rows and a distilling config: augmented by default, the variants cached for a resumed run
    augmentation = results["augmentation"]
    assert augmentation["variants_per_text"] == 20 and augmentation["candidates_from"] == "embedding_neighbours"
    assert 256 * 10 < augmentation["rows"] <= 256 * 20
    cache = out / "augmented" / "xtc_augmentation.json"
    made = cache.stat().st_mtime_ns
    # Quality floors. The first 256 dev rows are 51.2 % one class (a model that learns nothing scores that).
    # Measured with these flags: the teacher 75 % (3e-4 on MiniLM's sentence features), the 1-bit 3-layer student
    # 68 % at step 32; one standard error on 256 rows is 3 points, so both floors sit 3 or more below.
    majority = 0.512
    assert results["teacher_dev"]["dev"]["accuracy"] >= majority + 0.12, results["teacher_dev"]
    assert results["student_best"]["score"] >= majority + 0.05, results["student_best"]
    assert results["student_best"]["step"] in (16, 32)
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
    assert (out / "student" / "checkpoints" / "latest").read_text().strip() == "global_step32"
    for phase in ("teacher", "student"):  # --save_total_limit 1: step 16's checkpoint was removed once step 32 saved
        assert sorted(p.name for p in (out / phase / "checkpoints").glob("global_step*")) == ["global_step32"]
    packed_bytes = (out / "packed" / "model.safetensors").stat().st_size
    assert packed_bytes * 10 < (out / "final" / "model.safetensors").stat().st_size
    assert abs(results["packed_dev"]["dev"]["accuracy"] - results["final_dev"]["dev"]["accuracy"]) <= 2 / 256
    alone = _run(
        [sys.executable, TRAIN, "--eval_packed", str(out / "packed"), "--data_dir", str(GLUE_DIR)]
        + ["--max_eval_samples", "256", "--max_seq_length", "32"]
    )
    assert json.loads(alone.stdout.strip().splitlines()[-1])["packed_dev"] == results["packed_dev"]

    resumed = _run(launcher + common + ["--resume_from_checkpoint", "latest"])  # both phases complete: at the end
    assert f"reusing the {augmentation['rows']} augmented rows" in resumed.stderr + resumed.stdout
    assert cache.stat().st_mtime_ns == made
    log = read_jsonl(out / "student" / "train_log.jsonl")
    assert log[-1] == {"resumed_from": str(out / "student" / "checkpoints" / "global_step32"), "step": 32}
    assert _leaked_shm(port) == []


def _leaked_shm(port: int) -> list:
    """DeepSpeed's CPU all-reduce workspaces of the job on ``port`` still in /dev/shm (xtc_ds releases them)."""
    return sorted(SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def _tiny_config(path, monitor_dir, stage=0, grad_accum=1, act_range="static"):
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": grad_accum,
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
                "shared_parameters": {"enabled": True, "schedule_offset": 0, "range_calibration": act_range},
                "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["intermediate"]}},
            },
            "knowledge_distillation": {"enabled": True},
        },
    }
    path.write_text(json.dumps(config))


def _losses(log):
    return {r["step"]: r["loss"] for r in log if "loss" in r}


def _tiny_run(config, out, teacher, total, *extra):
    """launch/train.py flags of a tiny-teacher run on 400 SST-2 rows, a checkpoint every 5 steps."""
    return [
        TRAIN,
        *("--deepspeed_config", str(config), "--data_dir", str(GLUE_DIR), "--output_dir", str(out)),
        *("--teacher_model", str(teacher), "--max_train_samples", "400", "--max_eval_samples", "64"),
        *("--max_seq_length", "16", "--max_train_steps", str(total), "--eval_steps", "50", "--save_steps", "5"),
        *("--learning_rate", "1e-3", *extra),
    ]


def _two_ranks():
    """The deepspeed launcher with 2 ranks, one OpenMP thread each (two ranks on two shared cores)."""
    return ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port())], job_env(OMP_NUM_THREADS="1")


@pytest.mark.parametrize(
    "ranks, stage, total, batching",
    [(1, 0, 60, ()), (2, 2, 40, ("--group_by_length",))],  # killed after step 10, while the bits still fall
    ids=["one-process", "two-ranks-zero2-grouped"],
)
def test_sigkill_then_resume_continues_step_for_step(tmp_path, ranks, stage, total, batching):
    """Kill the whole job (all ranks) with SIGKILL, resume: same step, data, RNG, optimizer and schedule."""
    glue_task_dir("SST-2")
    teacher, config = tmp_path / "teacher", tmp_path / "ds.json"
    save_tiny_teacher(teacher)
    _tiny_config(config, tmp_path / "monitor", stage)
    launcher, env = _two_ranks() if ranks > 1 else ([sys.executable], job_env())

    def cmd(out, *extra):
        return launcher + _tiny_run(config, out, teacher, total, *batching, *extra)

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
    checkpoints = out / "student" / "checkpoints"

    def complete_steps():  # tags whose manifest is written: what --resume_from_checkpoint latest may pick
        return [int(path.parent.name[11:]) for path in checkpoints.glob("global_step*/xtc_manifest.json")]

    deadline = time.time() + 1200  # a liveness bound only: a run that never checkpoints must not hang CI
    while time.time() < deadline and proc.poll() is None:
        if max(complete_steps(), default=0) >= 10:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    checkpoint_step = max(complete_steps())
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
    if ranks > 1:  # released even by the ranks killed with SIGKILL
        assert _leaked_shm(int(launcher[launcher.index("--master_port") + 1])) == []


@pytest.mark.parametrize("stage, resumed_stage", [(2, 1), (3, 3)], ids=["zero2-to-zero1", "zero3-to-zero3"])
def test_two_rank_checkpoint_resharded_to_one_process(tmp_path, stage, resumed_stage):
    """2 ranks, continued by 1 process with 2 accumulation steps (the same global batch): DeepSpeed's universal
    checkpoint reshards the optimizer state and the losses go on as if never stopped. Dropout off and
    per-token activation ranges: the only randomness and batch statistics a different process count cannot
    reproduce."""
    glue_task_dir("SST-2")
    if stage == 3 and Version(deepspeed.__version__) < Version("0.19"):
        pytest.skip(
            f"DeepSpeed {deepspeed.__version__}: ZeRO-3 universal conversion not verified before 0.19 (0.16.9's "
            "ds_to_universal fails on padded ZeRO-3 partitions; the pipeline reports its error, exit code 2)"
        )
    teacher, total = tmp_path / "teacher", 30
    save_tiny_teacher(teacher, dropout=0.0)
    refused_stage = 3 if resumed_stage != 3 else 2
    for name, zero, accum in (
        ("two_ranks", stage, 1),
        ("one_process", resumed_stage, 2),
        ("refused", refused_stage, 1),
    ):
        _tiny_config(tmp_path / f"{name}.json", tmp_path / "monitor", zero, accum, act_range="dynamic")
    out = tmp_path / "run"
    launcher, env = _two_ranks()
    _run(launcher + _tiny_run(tmp_path / "two_ranks.json", out, teacher, total), env=env)
    reference = _losses(read_jsonl(out / "student" / "train_log.jsonl"))

    last_but_one = out / "student" / "checkpoints" / f"global_step{total - 5}"
    alone = [sys.executable, *_tiny_run(tmp_path / "one_process.json", out, teacher, total)]
    _run(alone + ["--resume_from_checkpoint", str(last_but_one)])
    log = read_jsonl(out / "student" / "train_log.jsonl")
    universal = out / "student" / "checkpoints" / "universal" / last_but_one.name
    after = _losses(log[log.index({"resumed_from": str(universal), "step": total - 5}) :])
    assert sorted(after) == list(range(total - 4, total + 1))
    for step, loss in after.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), step
    assert not universal.parent.exists()  # superseded by the checkpoint the resumed run wrote

    # Across ZeRO-3's boundary DeepSpeed cannot carry the optimizer state: a clear error before any training.
    refused = [sys.executable, *_tiny_run(tmp_path / "refused.json", out, teacher, total)]
    result = subprocess.run(
        refused + ["--resume_from_checkpoint", "latest"], env=job_env(), cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-3000:]
    expected = f"written with ZeRO stage {resumed_stage} on 1 process(es) and this run uses stage {refused_stage} on 1"
    assert expected in result.stderr


def test_resume_falls_back_from_a_truncated_checkpoint_and_from_a_copied_folder(tmp_path):
    """A truncated newest checkpoint is passed over with a warning naming the file, and a copy of the checkpoint
    folder outside the output directory is resumed from: either way the losses go on as if never stopped."""
    glue_task_dir("SST-2")
    teacher, config, total = tmp_path / "teacher", tmp_path / "ds.json", 10
    save_tiny_teacher(teacher)
    _tiny_config(config, tmp_path / "monitor")
    out = tmp_path / "run"
    _run([sys.executable, *_tiny_run(config, out, teacher, total)])
    reference = _losses(read_jsonl(out / "student" / "train_log.jsonl"))
    checkpoints = out / "student" / "checkpoints"
    copy = tmp_path / "copied_checkpoints"
    subprocess.run(["cp", "-r", str(checkpoints), str(copy)], check=True)

    states = checkpoints / "global_step10" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])  # a full disk, a half-finished copy
    result = _run([sys.executable, *_tiny_run(config, out, teacher, total), "--resume_from_checkpoint", "latest"])
    assert f"{states}: " in result.stderr and "resuming from" in result.stderr
    log = read_jsonl(out / "student" / "train_log.jsonl")
    start = log.index({"resumed_from": str(checkpoints / "global_step5"), "step": 5})
    after = _losses(log[start:])
    assert sorted(after) == list(range(6, total + 1))
    assert all(loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6) for step, loss in after.items())

    fresh = tmp_path / "fresh"
    flags = ["--resume_from_checkpoint", str(copy / "global_step5")]
    _run([sys.executable, *_tiny_run(config, fresh, teacher, total), *flags])
    log = read_jsonl(fresh / "student" / "train_log.jsonl")
    assert log[0] == {"resumed_from": str(copy / "global_step5"), "step": 5}
    after = _losses(log)
    assert sorted(after) == list(range(6, total + 1))
    assert all(loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6) for step, loss in after.items())


FAILING_ONNX_EXPORT = """import sys
if sys.argv and sys.argv[0].endswith("train.py"):  # the ranks of launch/train.py, not the launcher
    from xtc_ds.recipes.classification import finish

    def export_onnx(*args, **kwargs):
        raise OSError(28, "No space left on device")

    finish.export_onnx = export_onnx
"""
"""A ``sitecustomize`` that makes the ONNX export of every rank of the job fail as a full disk would."""


def test_a_late_failure_on_two_ranks_ends_both_with_one_line_and_keeps_the_results(tmp_path):
    """2 ranks, ONNX export failing after training (a full disk): the job ends with exit code 3, the error named in
    one line with its redo command, no traceback and no rank left to die on a closed connection; every result
    made before the failure is on disk."""
    glue_task_dir("SST-2")
    teacher, config, out = tmp_path / "teacher", tmp_path / "ds.json", tmp_path / "run"
    save_tiny_teacher(teacher)
    _tiny_config(config, tmp_path / "monitor")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_ONNX_EXPORT)
    launcher, env = _two_ranks()
    env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
    cmd = launcher + _tiny_run(config, out, teacher, 10)
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    console = result.stdout + result.stderr
    assert result.returncode == 3, console[-4000:]
    error = "error: onnx/ failed (OSError: [Errno 28] No space left on device); redo it with: python -m xtc_ds.export"
    assert error in console, console[-4000:]
    for crash in ("Traceback", "Connection closed by peer"):
        assert crash not in console, console[-4000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["student_best"]["steps"] == 10 and results["packed_dev"] and "onnx_dev" not in results
    assert len(results["failed_steps"]) == 1 and "onnx/" in results["failed_steps"][0]
    assert (out / "packed" / "model.safetensors").is_file() and not (out / "onnx" / "model.onnx").exists()


def test_a_phase_without_a_finite_dev_score_fails_and_is_not_complete(tmp_path):
    """A teacher that diverges (a learning rate far too high) scores NaN on dev: no best checkpoint is written and
    the phase is not complete, so the student phase does not start from a missing teacher."""
    data = tmp_path / "STS-B"
    data.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [f"{i}\tg\tf\t2012\t{i}\ts\ts\tA man plays {i}.\tA man plays.\t{i % 5}.0\n" for i in range(32)]
    (data / "train.tsv").write_text(header + "".join(rows))
    (data / "dev.tsv").write_text(header + "".join(rows[:8]))
    teacher = tmp_path / "teacher"
    save_tiny_teacher(teacher, num_labels=1)
    out = tmp_path / "run"
    cmd = [sys.executable, TRAIN, "--deepspeed_config", "ds_configs/ds_xtc_1bit.json", "--task_name", "stsb"]
    cmd += ["--data_dir", str(data), "--model_name_or_path", str(teacher), "--output_dir", str(out)]
    cmd += ["--max_seq_length", "16", "--teacher_max_train_steps", "2", "--eval_steps", "1"]
    cmd += ["--teacher_learning_rate", "1e30", "--warmup_ratio", "0"]
    result = subprocess.run(cmd, env=job_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: teacher: no dev evaluation gave a finite score" in result.stderr
    assert not (out / "teacher" / "eval_results.json").exists() and not (out / "teacher" / "best").exists()


def test_the_best_student_is_picked_once_the_compression_schedule_is_final(tmp_path):
    """A gradual snip_momentum schedule (pruning at steps 2, 4, 6) evaluated every step: scores of the partly
    pruned students are logged but never picked, so the best checkpoint is the model redundancy_clean bakes."""
    glue_task_dir("SST-2")
    teacher, config = (
        tmp_path / "teacher",
        json.loads((REPO_ROOT / "ds_configs" / "ds_xtc_1bit_snip50.json").read_text()),
    )
    save_tiny_teacher(teacher)
    snip = config["compression_training"]["sparse_pruning"]["shared_parameters"]
    snip.update(schedule_offset=2, schedule_offset_end=6, schedule_offset_stride=2)
    (tmp_path / "ds.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    _run([sys.executable, *_tiny_run(tmp_path / "ds.json", out, teacher, 8, "--eval_steps", "1")])
    log = read_jsonl(out / "student" / "train_log.jsonl")
    assert [r["step"] for r in log if "eval" in r] == list(range(1, 9))
    assert json.loads((out / "student" / "best" / "xtc_best.json").read_text())["step"] >= 6
    weights = load_file(str(out / "final" / "model.safetensors"))
    query = weights["bert.encoder.layer.0.attention.self.query.weight"]
    assert float((query == 0).float().mean()) == 0.5  # half the 4x1 blocks of every Linear but classifier/pooler
    assert bool((weights["classifier.weight"] != 0).all())
