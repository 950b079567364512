"""Process-group start-up for every way a job is launched: deepspeed/torchrun variables, or MPI (mpirun).

``deepspeed`` (pdsh, ``--no_ssh``), ``torchrun`` and SLURM-style wrappers set ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``; a plain ``mpirun`` (Open MPI or MPICH) sets only its own variables. Those are
mapped here, keeping a ``MASTER_ADDR`` the user exported and using loopback when every rank is on this
host; for a multi-host MPI job without ``MASTER_ADDR``, DeepSpeed's mpi4py discovery broadcasts rank 0's
address. DeepSpeed's own discovery always took ``hostname -I``, even for a one-host job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from xtc_ds._compat import deepspeed_compatible_ops
from xtc_ds._rank import rank_and_world

__all__ = [
    "rank_and_world",
    "launched",
    "single_process_defaults",
    "map_mpi_environment",
    "init_distributed",
    "prepare_deepspeed_ops",
    "shm_op_applies",
    "announce_shm_build",
    "release_shm_workspace",
    "rank_zero_decides",
    "DEFAULT_PORT",
]

DEFAULT_PORT = 29500
SHM_DIR = Path("/dev/shm")
SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce, JIT-built when the process group starts
_shm_released = False
_MPI_VARIABLES = {  # Open MPI, MPICH/Intel MPI (Hydra), PMIx
    "RANK": ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"),
    "WORLD_SIZE": ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
    "LOCAL_RANK": ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"),
    "LOCAL_WORLD_SIZE": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
}


def launched() -> bool:
    """True when a launcher (deepspeed, torchrun, SLURM wrappers, mpirun with any PMI) set this process's rank."""
    return "RANK" in os.environ or any(name in os.environ for name in _MPI_VARIABLES["RANK"])


def single_process_defaults() -> None:
    """A plain ``python`` run without any launcher: a one-process job on a free loopback port."""
    if launched():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _first(environ: MutableMapping[str, str], names: tuple[str, ...]) -> Optional[str]:
    return next((environ[name] for name in names if name in environ), None)


def map_mpi_environment(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Fill ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from MPI's variables.

    Only when ``RANK`` is unset and an MPI launcher's variables are present; returns whether it mapped.
    ``MASTER_ADDR`` is left unset for a multi-host job the user gave none for (see the module docstring).
    """
    if "RANK" in environ:
        return False
    values = {key: _first(environ, names) for key, names in _MPI_VARIABLES.items()}
    if values["RANK"] is None or values["WORLD_SIZE"] is None:
        return False
    environ["RANK"], environ["WORLD_SIZE"] = values["RANK"], values["WORLD_SIZE"]
    environ["LOCAL_RANK"] = values["LOCAL_RANK"] or "0"
    environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    if "MASTER_ADDR" not in environ and values["LOCAL_WORLD_SIZE"] == values["WORLD_SIZE"]:
        environ["MASTER_ADDR"] = "127.0.0.1"  # every rank on this host
    return True


def init_distributed(timeout: timedelta = timedelta(minutes=30), dist_backend: Optional[str] = None) -> None:
    """``deepspeed.init_distributed`` after :func:`map_mpi_environment`; a no-op when already initialized.

    Args:
        timeout: how long a collective waits for a dead or stuck rank before the job fails; also the default
            of process groups created later (DeepSpeed's data-parallel and ZeRO groups).
        dist_backend: ``gloo``, ``nccl``, ... (default: the accelerator's).
    """
    import deepspeed
    import torch.distributed.distributed_c10d as c10d

    map_mpi_environment()
    prepare_deepspeed_ops()
    # DeepSpeed creates its data-parallel and ZeRO groups with new_group() and no timeout, which falls back to
    # torch's module default (30 minutes); without this a stuck rank would hold the others that long.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(dist_backend=dist_backend, auto_mpi_discovery=True, timeout=timeout)
    release_shm_workspace()


def shm_op_applies() -> bool:
    """Whether DeepSpeed builds its CPU shared-memory all-reduce op here (the CPU accelerator, op compatible)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu" and deepspeed_compatible_ops().get(SHM_OP, False)


def announce_shm_build() -> None:
    """Clear a lock a killed build of DeepSpeed's shared-memory op left, and say so if it is about to be built."""
    from xtc_ds._log import announce
    from xtc_ds.ops.builder import build_dir, is_built
    from xtc_ds.ops.cache import clear_stale_lock

    clear_stale_lock(build_dir(SHM_OP))
    if not is_built(SHM_OP):
        announce(
            f"xtc_ds: DeepSpeed is building its CPU shared-memory all-reduce op {SHM_OP} in {build_dir(SHM_OP)} "
            "(first use in this environment, half a minute to 2 minutes on 2 CPU cores)"
        )


def prepare_deepspeed_ops() -> None:
    """Before DeepSpeed starts the process group on the CPU accelerator: skip or announce its shared-memory op.

    A one-process job never uses the shared-memory all-reduce, so it is not built (about 2 silent minutes on a
    2-core machine otherwise); a multi-process job says it is building it (:func:`announce_shm_build`).
    """

    if not shm_op_applies():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        deepspeed_compatible_ops()[SHM_OP] = False
        return
    announce_shm_build()


def _shm_workspace_path(rank: int) -> Path:
    """Where DeepSpeed's CPU shared-memory all-reduce keeps rank ``rank``'s workspace (its ``shm.cpp`` naming)."""
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def release_shm_workspace() -> None:
    """Unlink this rank's shared-memory all-reduce workspace once every rank has mapped all of them.

    On the CPU accelerator DeepSpeed (0.16 to 0.19 at least) gives each process a 66 MB POSIX shared-memory
    segment in ``/dev/shm`` and never unlinks it, so every run leaves 66 MB per rank of RAM-backed files
    behind (207 leftover segments had filled 14 GB of a 24 GB machine's ``/dev/shm``). The ranks map each
    other's segments while DeepSpeed initializes; after a barrier the names are no longer needed and the
    mappings outlive the unlink, so the memory goes back to the system when the process ends, even if it is
    killed. Collective: every rank must call it (``init_distributed`` and ``xtc_ds.initialize`` do); later
    calls do nothing.
    """
    global _shm_released
    import deepspeed.comm.comm as ds_comm
    import torch.distributed as dist

    backend = getattr(ds_comm, "cdb", None)
    if _shm_released or getattr(backend, "shm_comm_op", None) is None or not dist.is_initialized():
        return
    dist.barrier()
    _shm_workspace_path(dist.get_rank()).unlink(missing_ok=True)
    _shm_released = True


def rank_zero_decides(decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on rank 0 only and give every rank its result, or raise its :class:`XtcError` on every rank.

    For work that reads shared files once for the whole job (verifying or converting a checkpoint). Collective
    when a process group is running; a plain call otherwise.
    """
    import torch.distributed as dist

    from xtc_ds._log import is_rank_zero
    from xtc_ds.errors import XtcError

    outcome: list[Any] = [None]
    if is_rank_zero():
        try:
            outcome[0] = decide()
        except XtcError as err:
            outcome[0] = err
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], XtcError):
        raise outcome[0]
    return outcome[0]
