"""Process-group start-up for every way a job is launched: deepspeed/torchrun variables, or MPI (mpirun).

``deepspeed`` (pdsh, ``--no_ssh``), ``torchrun`` and SLURM-style wrappers set ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``; a plain ``mpirun`` (Open MPI or MPICH) sets only its own variables. Those are
mapped here, keeping a ``MASTER_ADDR`` the user exported and using loopback when every rank is on this
host; for a multi-host MPI job without ``MASTER_ADDR``, DeepSpeed's mpi4py discovery broadcasts rank 0's
address. DeepSpeed's own discovery always took ``hostname -I``, even for a one-host job.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Optional

__all__ = ["map_mpi_environment", "init_distributed", "DEFAULT_PORT"]

DEFAULT_PORT = 29500
_MPI_VARIABLES = {  # Open MPI, MPICH/Intel MPI (Hydra), PMIx
    "RANK": ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"),
    "WORLD_SIZE": ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
    "LOCAL_RANK": ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"),
    "LOCAL_WORLD_SIZE": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
}


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
    # DeepSpeed creates its data-parallel and ZeRO groups with new_group() and no timeout, which falls back to
    # torch's module default (30 minutes); without this a stuck rank would hold the others that long.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(dist_backend=dist_backend, auto_mpi_discovery=True, timeout=timeout)
