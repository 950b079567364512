"""A simulated two-node job: two network namespaces joined by a veth pair, one rank per "node".

Each node runs ``deepspeed --no_ssh --node_rank N --hostfile H``, as on a cluster without ssh between nodes.
The namespaces and their private /24 exist only for the test and are removed after; without permission to
create namespaces (no root, containers without CAP_SYS_ADMIN) the test skips and says so.
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT, _free_port, job_env

pytestmark = pytest.mark.slow
WORKER = str(REPO_ROOT / "tests" / "distributed" / "xtc_worker.py")
SUBNET = "10.213.77"  # only ever between the two test namespaces


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_nodes():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = f"xtc{os.getpid() % 100000}"
    names, devices = [f"{tag}n0", f"{tag}n1"], [f"{tag}v0", f"{tag}v1"]
    try:
        for name in names:
            result = _ip("netns", "add", name)
            if result.returncode:
                pytest.skip(f"cannot create network namespaces here: {result.stderr.strip()}")
        steps = [
            ("link", "add", devices[0], "type", "veth", "peer", "name", devices[1]),
            *[("link", "set", dev, "netns", name) for dev, name in zip(devices, names)],
            *[
                ("-n", name, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", dev)
                for i, (dev, name) in enumerate(zip(devices, names))
            ],
            *[("-n", name, "link", "set", dev, "up") for dev, name in zip(devices, names)],
            *[("-n", name, "link", "set", "lo", "up") for name in names],
        ]
        for step in steps:
            result = _ip(*step)
            assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
        yield list(zip(names, devices))
    finally:
        for name in names:
            _ip("netns", "del", name)  # removes its end of the veth pair, and with it the pair


def test_two_nodes_no_ssh(tmp_path, two_nodes):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(_free_port())
    jobs = []
    for node_rank, (namespace, device) in enumerate(two_nodes):
        env = job_env(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=device)  # gloo must bind the veth, not lo
        cmd = ["ip", "netns", "exec", namespace, "deepspeed", "--hostfile", str(hostfile), "--no_ssh"]
        cmd += ["--node_rank", str(node_rank), "--master_addr", f"{SUBNET}.1", "--master_port", port]
        cmd += [WORKER, "--out", str(tmp_path), "--stages", "2", "--steps", "3"]
        jobs.append(
            subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    records = [json.loads((tmp_path / f"rank{rank}_stage2.json").read_text()) for rank in (0, 1)]
    assert records[0]["world"] == 2 and records[0]["losses"] == records[1]["losses"]
    assert all(weight["levels"] == 2 for record in records for weight in record["weights"].values())
