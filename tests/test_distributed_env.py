"""MPI launcher variables map to torch.distributed's, never to a non-loopback address on one host."""

from xtc_ds.distributed import DEFAULT_PORT, map_mpi_environment


def test_open_mpi_one_host_uses_loopback():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    env["OMPI_COMM_WORLD_LOCAL_SIZE"] = "2"
    assert map_mpi_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "2", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == str(DEFAULT_PORT)


def test_mpich_multi_host_keeps_the_users_master_or_leaves_discovery():
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "MASTER_PORT": "1234"}
    assert map_mpi_environment(env)
    assert (env["RANK"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("3", "1", "1234")
    assert "MASTER_ADDR" not in env  # several hosts: DeepSpeed's mpi4py discovery broadcasts rank 0's address
    env = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2", "MASTER_ADDR": "10.1.2.3"}
    assert map_mpi_environment(env) and env["MASTER_ADDR"] == "10.1.2.3"


def test_launcher_variables_win():
    env = {"RANK": "0", "WORLD_SIZE": "1", "PMI_RANK": "5", "PMI_SIZE": "8"}
    assert not map_mpi_environment(env)
    assert env["RANK"] == "0"
    assert not map_mpi_environment({})
