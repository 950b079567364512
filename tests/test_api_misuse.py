"""Adding XTC to an existing DeepSpeed job: what is easy to get wrong fails early and names the fix, and the
job says what it compressed. The README's DeepSpeed-loop example runs here as written."""

import re
import subprocess
import sys

import pytest
import torch

from configs import recipe
from conftest import REPO_ROOT, job_env
from models import tiny_bert
from xtc_ds import ConfigError, init_compression, initialize, redundancy_clean

deepspeed = pytest.importorskip("deepspeed")


def test_a_teacher_that_is_the_student_is_refused_before_any_training():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"teacher_model is the student .* xtc_ds.build_student\(teacher, config\)"):
        initialize(model=model, teacher_model=model, config=recipe(), optimizer=torch.optim.AdamW(model.parameters()))
    teacher = tiny_bert()
    sharing = tiny_bert()
    sharing.classifier = teacher.classifier  # one shared parameter is enough to freeze part of the student
    with pytest.raises(ValueError, match="shares its parameters"):
        init_compression(sharing, recipe(), teacher_model=teacher)


def test_injection_says_what_it_compressed_whatever_the_logging(capsys):
    init_compression(tiny_bert(layers=2), recipe())
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "xtc_ds: compressing BertForSequenceClassification: weights 1-bit in 13 modules ('wq1'); "
        "activations 8-bit in 12 modules ('aq1'); knowledge distillation on"
    )


@pytest.mark.slow
def test_engine_report_and_later_calls_without_the_config():
    config = recipe(kd=False, train_batch_size=8, train_micro_batch_size_per_gpu=8)
    config["compression_training"]["weight_quantization"]["shared_parameters"]["schedule_offset"] = 2
    model = tiny_bert(layers=2)
    engine, *_ = initialize(model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    report = engine.xtc.report()
    assert report["step"] == 0 and report["weight"]["wq1"]["bits"] is None  # off until step 2
    assert len(report["weight"]["wq1"]["modules"]) == 13 and report["activation"]["aq1"]["bits"] == 8
    ids = torch.randint(1, 96, (8, 12))
    for _ in range(2):
        engine.backward(engine(input_ids=ids, labels=ids[:, 0] % 2).loss)
        engine.step()
    report = engine.xtc.report()
    assert report["step"] == 2 and report["weight"]["wq1"]["bits"] == 1 and not report["distillation"]
    with pytest.raises(ConfigError, match=r"wq1\.params\.target_bits: model 1, config 2"):
        redundancy_clean(engine, recipe(bits=2, kd=False, train_batch_size=8, train_micro_batch_size_per_gpu=8))
    cleaned = redundancy_clean(engine)  # the config recorded at injection
    assert cleaned.bert.encoder.layer[0].intermediate.dense.weight.unique().numel() == 2


JOB = """
import torch, xtc_ds
from models import tiny_bert
from configs import recipe
model = tiny_bert(layers=2)
engine, *_ = xtc_ds.initialize(model=model, config=recipe(kd=False, train_batch_size=4,
    train_micro_batch_size_per_gpu=4), optimizer=torch.optim.AdamW(model.parameters()))
ids = torch.randint(1, 96, (4, 8))
engine.backward(engine(input_ids=ids, labels=ids[:, 0] % 2).loss)
engine.step()
print("steps", engine.xtc.report()["step"])
"""


@pytest.mark.slow
def test_python_job_py_runs_without_a_launcher_or_mpi4py(tmp_path):
    """No RANK/WORLD_SIZE and no mpi4py: DeepSpeed alone would try MPI discovery and fail to import mpi4py."""
    blocker = tmp_path / "no_mpi" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mpi4py'\")\n")
    env = job_env(OMP_NUM_THREADS="1")
    for key in ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME"):
        env.pop(key, None)
    env["PYTHONPATH"] = f"{tmp_path / 'no_mpi'}:{REPO_ROOT / 'tests'}:{env['PYTHONPATH']}"
    (tmp_path / "job.py").write_text(JOB)
    result = subprocess.run(
        [sys.executable, "job.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "steps 1"


def _readme_block(heading: str) -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_deepspeed_loop_example_runs_as_written(tmp_path, monkeypatch):
    teacher_dir = tmp_path / "teacher"
    tiny_bert(layers=6).save_pretrained(teacher_dir)
    (tmp_path / "ds_configs").symlink_to(REPO_ROOT / "ds_configs")
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(1, 96, (32, 12))
    loader = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2}] * 2
    namespace = {"path": str(teacher_dir), "loader": loader}
    exec(compile(_readme_block("### A DeepSpeed training loop"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.bert.encoder.layer[0].intermediate.dense.weight.unique().numel() == 2
    assert len(model.bert.encoder.layer) == 3 and (tmp_path / "out" / "latest").exists()
