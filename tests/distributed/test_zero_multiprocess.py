"""Two processes through the deepspeed launcher (CPU, gloo): XTC under ZeRO 0-3, and a rank dying mid-run."""

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, _free_port, job_env
from replicas import assert_replicas_agree
from xtc_ds.zero3 import can_partition_new_parameters

pytestmark = pytest.mark.slow
WORKER = str(Path(__file__).with_name("xtc_worker.py"))
# One OpenMP thread per rank: two ranks with default threading on two shared cores run 20x slower.
ENV = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def _launch(out: Path, *worker_args: str, timeout: float = 300, worker: str = WORKER) -> subprocess.CompletedProcess:
    if shutil.which("deepspeed") is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), worker, "--out", str(out)]
    return subprocess.run(
        cmd + list(worker_args), env=job_env(**ENV), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _records(out: Path, stages) -> dict:
    return {
        (rank, stage): json.loads((out / f"rank{rank}_stage{stage}.json").read_text())
        for rank in (0, 1)
        for stage in stages
    }


def test_xtc_under_zero_0_to_3_on_two_ranks(tmp_path):
    result = _launch(tmp_path, "--stages", "0,1,2,3", "--steps", "10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, range(4))
    for rank in (0, 1):
        losses = records[(rank, 0)]["losses"]
        assert losses[-1] < losses[0] - 0.01, losses  # the 1-bit student learns from its teacher
    for stage in range(4):  # each rank its own batch, the same model on both
        assert_replicas_agree(records[(0, stage)], records[(1, stage)])
    for (rank, stage), record in records.items():
        assert record["world"] == 2
        # a rank's losses are the same at every stage, to fp32 rounding
        assert record["losses"] == pytest.approx(records[(rank, 0)]["losses"], rel=1e-5), (rank, stage)
        # the quantizer sees the whole weight, also when ZeRO-3 holds only a partition of it locally
        assert record["quantizer_saw"] == [[64, 32]], (rank, stage)
        assert record["local_numel"] == (0 if stage == 3 else 64 * 32), (rank, stage)
        for name, weight in record["weights"].items():
            assert weight["levels"] == 2, (rank, stage, name)  # binary on every rank
        if stage == 3:  # export_packed gathered the partitions; every rank sees rank 0's complete file
            assert record["exported_packed_shape"] == {"packed_weight": [64, 4]}, rank


def test_head_and_row_pruning_with_1bit_weights_under_zero_0_to_3(tmp_path):
    result = _launch(tmp_path, "--stages", "0,1,2,3", "--steps", "6", "--prune")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, range(4))
    reference = records[(0, 0)]
    for stage in range(4):
        assert_replicas_agree(records[(0, stage)], records[(1, stage)])
    for (rank, stage), record in records.items():
        assert record["losses"] == pytest.approx(records[(rank, 0)]["losses"], rel=1e-5), (rank, stage)
        pruned = record["pruned"]
        # the same masks on every rank and stage (ZeRO-3: scores and weights gathered, not a local partition)
        assert pruned["kept_heads"] == reference["pruned"]["kept_heads"] and len(pruned["kept_heads"]) == 1
        assert pruned["kept_rows"] == reference["pruned"]["kept_rows"] and len(pruned["kept_rows"]) == 32
        if stage == 3 and not can_partition_new_parameters():  # the legacy stack: refused, naming the fix
            assert "needs DeepSpeed >= 0.19" in pruned["refused"], pruned
            continue
        assert pruned["kept_heads_reloaded"] == pruned["kept_heads"]  # restored by the checkpoint
        # the schedule state a checkpoint saves holds the whole scores, also of ZeRO-3-partitioned topk ones
        assert pruned["saved_scores"] == {
            "attention.output.dense.head_pruning": [2],
            "intermediate.dense.row_pruning": [64],
        }
        assert pruned["cleaned"] == pytest.approx(pruned["masked"], abs=1e-5), (rank, stage)
        assert pruned["cleaned"] == pytest.approx(reference["pruned"]["cleaned"], abs=1e-4), (rank, stage)
        assert pruned["shapes"]["attention.self.query"] == [16, 32], (rank, stage)
        assert pruned["shapes"]["attention.output.dense"] == [32, 16], (rank, stage)
        assert pruned["shapes"]["intermediate.dense"] == [32, 32], (rank, stage)
        assert pruned["shapes"]["output.dense"] == [32, 32], (rank, stage)
        # the FFN-in weight: binary, plus the zeros of its pruned rows (the query's rows of pruned heads keep their
        # full-precision values until cleaning: they feed only the pruned heads)
        assert record["weights"]["bert.encoder.layer.0.intermediate.dense"]["levels"] == 3, (rank, stage)
    for rank in (0, 1):  # the export of the cleaned stage-3 model holds the smaller FFN: 32 rows of 32 1-bit codes
        expected = {"packed_weight": [32, 4]} if can_partition_new_parameters() else None
        assert records[(rank, 3)]["exported_packed_shape"] == expected


def test_sparse_topk_pruning_with_1bit_weights_under_zero_0_and_3(tmp_path):
    result = _launch(tmp_path, "--stages", "0,3", "--steps", "6", "--sparse")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (0, 3))
    reference = records[(0, 0)]
    for stage in (0, 3):
        assert_replicas_agree(records[(0, stage)], records[(1, stage)])
    for (rank, stage), record in records.items():
        assert record["losses"] == pytest.approx(records[(rank, 0)]["losses"], rel=1e-5), (rank, stage)
        pruned = record["pruned"]
        assert pruned["zeros"] == 0.5, (rank, stage)  # half of every weight, on every rank
        assert pruned["cleaned"] == pytest.approx(pruned["masked"], abs=1e-6), (rank, stage)
        assert pruned["cleaned"] == pytest.approx(reference["pruned"]["cleaned"], abs=1e-4), (rank, stage)
        assert pruned["saved_scores"] == [32, 32]  # whole, also when ZeRO-3 partitions the scores
    for rank in (0, 1):  # a half-sparse binary weight (-a, 0, +a): a bitmap of its 64x32 weights and 1024 signs
        assert records[(rank, 3)]["exported_packed_shape"] == {"sparse_bitmap": [256], "sparse_values": [128]}
        assert records[(rank, 3)]["exported_bits"] == 2


def test_snip_momentum_pruning_keeps_the_same_blocks_on_every_rank_under_zero_0_and_3(tmp_path):
    result = _launch(tmp_path, "--stages", "0,3", "--steps", "6", "--snip")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (0, 3))
    reference = records[(0, 0)]
    kept = reference["pruned"]["kept_rows"]
    assert sum(kept) == 32 * 32 // 2 and len(set(kept)) > 1  # half the weights, unevenly over the rows
    for (rank, stage), record in records.items():
        pruned = record["pruned"]
        # scores summed over the ranks (each saw its own batch): the same blocks everywhere
        assert pruned["kept_rows"] == kept, (rank, stage)
        assert record["losses"] == pytest.approx(records[(rank, 0)]["losses"], rel=1e-5), (rank, stage)
        assert_replicas_agree(record, records[(1 - rank, stage)])
        assert pruned["zeros"] == 0.5, (rank, stage)
        assert pruned["cleaned"] == pytest.approx(pruned["masked"], abs=1e-6), (rank, stage)
    for rank in (0, 1):
        assert records[(rank, 3)]["exported_packed_shape"] == {"sparse_bitmap": [256], "sparse_values": [128]}


def test_channel_pruning_of_a_resnet_under_zero_0_and_3(tmp_path):
    result = _launch(
        tmp_path, "--stages", "0,3", "--steps", "4", worker=str(Path(__file__).with_name("channel_worker.py"))
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (0, 3))
    for (rank, stage), record in records.items():
        assert record["losses"] == pytest.approx(records[(rank, 0)]["losses"], rel=1e-5), (rank, stage)
        assert [len(kept) for kept in record["kept"]] == [4, 8], (rank, stage)
        if stage == 3 and not can_partition_new_parameters():  # the legacy stack: refused, naming the fix
            # DeepSpeed 0.16.9's ZeRO-3 left the two ranks with different topk channel scores in about one run
            # in five (a known limit, in docs/CONFIG.md); only the refusal is checked there
            assert "needs DeepSpeed >= 0.19" in record["refused"], record
            continue
        # the same channels on both ranks (under ZeRO-3 from the gathered scores). Not compared across stages:
        # Adam moves every score by about the learning rate whatever the size of its gradient, and these gradients
        # are so small that a stage's reduction order can flip a near tie
        assert record["kept"] == records[(1 - rank, stage)]["kept"], (rank, stage)
        assert_replicas_agree(record, records[(1 - rank, stage)])
        assert record["cleaned"] == pytest.approx(record["masked"], abs=1e-5), (rank, stage)
        assert record["shapes"] == {
            "0.convolution": [4, 8, 3, 3],
            "0.normalization": [4],
            "1.convolution": [8, 4, 3, 3],
            "1.normalization": [8],
        }, (rank, stage)


def test_zero3_partitioned_teacher_gives_the_same_losses(tmp_path):
    result = _launch(tmp_path / "replicated", "--stages", "3", "--steps", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result = _launch(tmp_path / "partitioned", "--stages", "3", "--steps", "4", "--teacher_zero3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    replicated, partitioned = _records(tmp_path / "replicated", (3,)), _records(tmp_path / "partitioned", (3,))
    for key in replicated:
        assert partitioned[key]["losses"] == pytest.approx(replicated[key]["losses"], rel=1e-5)
    assert_replicas_agree(partitioned[(0, 3)], partitioned[(1, 3)])
    for key in replicated:
        assert replicated[key]["teacher_local_numel"] > 0 and partitioned[key]["teacher_local_numel"] == 0


def test_ternary_bf16_under_zero_1_and_3(tmp_path):
    result = _launch(tmp_path, "--stages", "1,3", "--steps", "3", "--bits", "2", "--bf16")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (1, 3))
    for (rank, stage), record in records.items():
        assert all(math.isfinite(loss) for loss in record["losses"]), (rank, stage)
        for name, weight in record["weights"].items():
            assert weight["levels"] == 3 and weight["shape"][1] == 32, (rank, stage, name)  # -a, 0, +a
        assert_replicas_agree(record, records[(1 - rank, stage)])


@pytest.mark.parametrize(
    "fault, stage, cause",
    [
        # a dead rank: the launcher sees its exit status (or rank 0 its closed connection first) and ends the job
        (
            "--die",
            "2",
            r"'--local_rank=1'.* exits with return code = 3|\[rank0\]: RuntimeError: .*Connection closed by peer",
        ),
        # a stalled rank (alive): the other's next collective times out after --timeout_s 10 and ends the job
        ("--hang", "0", r"\[rank0\]: RuntimeError: .*Timed out waiting 10000ms"),
    ],
    ids=["dying-rank", "stuck-rank"],
)
def test_a_failing_rank_ends_the_job(tmp_path, fault, stage, cause):
    result = _launch(
        tmp_path, "--stages", stage, "--steps", "50", f"{fault}_rank", "1", f"{fault}_step", "3", "--timeout_s", "10"
    )
    assert result.returncode != 0
    assert re.search(cause, result.stdout + result.stderr), result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / f"rank0_stage{stage}.json").exists()  # the job did not run on to its end


def _mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        pytest.skip("no mpirun (pip install mpich mpi4py, or .[mpi])")
    pytest.importorskip("mpi4py")
    return path


def test_mpirun_with_mpi_discovery(tmp_path):
    """A plain ``mpirun -np 2``: ranks come from MPI's variables, the master address is loopback (one host)."""
    env = job_env(**ENV, MASTER_PORT=str(_free_port()))
    env.pop("MASTER_ADDR")
    cmd = [_mpirun(), "-np", "2", sys.executable, WORKER, "--out", str(tmp_path), "--stages", "2", "--steps", "3"]
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (2,))
    assert records[(0, 2)]["mpi"] is not None  # the ranks came from MPI's own variables
    assert records[(0, 2)]["world"] == 2
    assert_replicas_agree(records[(0, 2)], records[(1, 2)])


def test_deepspeed_launcher_mpich(tmp_path):
    """``deepspeed --launcher mpich`` with a hostfile (the ssh check skipped: this host has no sshd)."""
    _mpirun()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    cmd = ["deepspeed", "--hostfile", str(hostfile), "--launcher", "mpich", "--no_ssh_check", "--force_multi"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += [WORKER, "--out", str(tmp_path), "--stages", "1", "--steps", "3"]
    result = subprocess.run(cmd, env=job_env(**ENV), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (1,))
    assert records[(1, 1)]["world"] == 2 and records[(1, 1)]["mpi"] == "mpich"
    assert_replicas_agree(records[(0, 1)], records[(1, 1)])


def _open_mpi(tmp_path: Path) -> dict[str, str]:
    """PATH and mpi4py settings that select Open MPI (Debian's openmpi-bin) next to the venv's MPICH."""
    mpirun = shutil.which("mpirun.openmpi") or shutil.which("mpirun.openmpi", path="/usr/bin")
    libmpi = Path("/usr/lib/x86_64-linux-gnu/libmpi.so.40")
    if mpirun is None or shutil.which("ompi_info", path=str(Path(mpirun).parent)) is None or not libmpi.exists():
        pytest.skip("no Open MPI (apt-get install openmpi-bin; .ci/run installs it where it runs as root)")
    pytest.importorskip("mpi4py")
    bin_dir = tmp_path / "openmpi_bin"  # `mpirun` is what DeepSpeed calls; the venv's is MPICH's
    bin_dir.mkdir()
    (bin_dir / "mpirun").symlink_to(mpirun)
    (bin_dir / "ompi_info").symlink_to(Path(mpirun).parent / "ompi_info")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MPI4PY_LIBMPI": str(libmpi)}


def test_deepspeed_launcher_openmpi(tmp_path):
    """``deepspeed --launcher openmpi``: ranks from Open MPI's ``OMPI_COMM_WORLD_*`` variables."""
    from deepspeed.launcher.multinode_runner import OpenMPIRunner

    if "_setup_mpi_environment" in inspect.getsource(OpenMPIRunner.validate_args):
        pytest.skip(
            "this DeepSpeed's --launcher openmpi requires OMPI_* variables in the launcher itself "
            "(deepspeedai/DeepSpeed#7711, fixed by #7751); run mpirun directly instead"
        )
    env = job_env(**ENV, **_open_mpi(tmp_path))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    cmd = ["deepspeed", "--hostfile", str(hostfile), "--launcher", "openmpi", "--no_ssh_check", "--force_multi"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += ["--launcher_args", "--allow-run-as-root --oversubscribe --mca btl_tcp_if_include lo"]
    cmd += [WORKER, "--out", str(tmp_path), "--stages", "2", "--steps", "3"]
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (2,))
    assert [records[(rank, 2)]["mpi"] for rank in (0, 1)] == ["openmpi", "openmpi"]
    assert records[(0, 2)]["world"] == 2
    assert_replicas_agree(records[(0, 2)], records[(1, 2)])


def test_torchrun_environment(tmp_path):
    """``torchrun`` (and SLURM-style wrappers) set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR themselves."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    cmd = ["torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), WORKER, "--out", str(tmp_path), "--stages", "3", "--steps", "3"]
    result = subprocess.run(cmd, env=job_env(**ENV), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _records(tmp_path, (3,))
    assert records[(1, 3)]["world"] == 2 and records[(1, 3)]["local_numel"] == 0
    assert_replicas_agree(records[(0, 3)], records[(1, 3)])
