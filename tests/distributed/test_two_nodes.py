"""A simulated two-node job: two network namespaces joined by a veth pair, one rank per "node".

Each node runs ``deepspeed --no_ssh --node_rank N --hostfile H``, as on a cluster without ssh between nodes.
The namespaces and their private /24 exist only for the test and are removed after; without permission to
create namespaces (no root, containers without CAP_SYS_ADMIN) the test skips and says so.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, _free_port, job_env
from replicas import assert_replicas_agree

pytestmark = pytest.mark.slow
WORKER = str(REPO_ROOT / "tests" / "distributed" / "xtc_worker.py")
SUBNET = "10.213.77"  # only ever between the two test namespaces
LINK = "xtclink"  # each node's end of the veth pair


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
            # the same interface name on every node, as on a cluster: one GLOO_SOCKET_IFNAME fits all ranks
            *[("-n", name, "link", "set", "dev", dev, "name", LINK) for dev, name in zip(devices, names)],
            *[("-n", name, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", LINK) for i, name in enumerate(names)],
            *[("-n", name, "link", "set", LINK, "up") for name in names],
            *[("-n", name, "link", "set", "lo", "up") for name in names],
        ]
        for step in steps:
            result = _ip(*step)
            assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
        yield names
    finally:
        for name in names:
            _ip("netns", "del", name)  # removes its end of the veth pair, and with it the pair


def test_two_nodes_no_ssh(tmp_path, two_nodes):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(_free_port())
    jobs = []
    for node_rank, namespace in enumerate(two_nodes):
        env = job_env(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=LINK)  # gloo must bind the veth, not lo
        cmd = ["ip", "netns", "exec", namespace, "deepspeed", "--hostfile", str(hostfile), "--no_ssh"]
        cmd += ["--node_rank", str(node_rank), "--master_addr", f"{SUBNET}.1", "--master_port", port]
        cmd += [WORKER, "--out", str(tmp_path), "--stages", "2", "--steps", "3"]
        jobs.append(
            subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [job.communicate(timeout=900)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _check_records(tmp_path)


def _check_records(out: Path) -> None:
    records = [json.loads((out / f"rank{rank}_stage2.json").read_text()) for rank in (0, 1)]
    assert records[0]["netns"] != records[1]["netns"]  # one rank on each "node"
    assert records[0]["world"] == 2
    assert_replicas_agree(records[0], records[1])
    assert all(weight["levels"] == 2 for record in records for weight in record["weights"].values())


@pytest.fixture
def sshd_on_each_node(tmp_path, two_nodes):
    """An sshd on each node that accepts one throw-away key (pdsh is DeepSpeed's default multi-node launcher)."""
    sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin")
    if sshd is None or shutil.which("pdsh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs pdsh and openssh-server (apt-get install pdsh openssh-server; .ci/run does as root)")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    daemons = []
    try:
        for i, namespace in enumerate(two_nodes):
            config = keys / f"sshd{i}.conf"
            config.write_text(
                f"ListenAddress {SUBNET}.{i + 1}\nHostKey {keys / 'host'}\n"
                f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / f'sshd{i}.pid'}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
            )
            daemons.append(subprocess.Popen(["ip", "netns", "exec", namespace, sshd, "-D", "-e", "-f", str(config)]))
        options = f"-i {keys / 'client'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
        probe = ["ip", "netns", "exec", two_nodes[0], "ssh", *options.split(), f"{SUBNET}.2", "true"]
        deadline = time.monotonic() + 300  # liveness only: generous for a machine busy with other tests
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the test's sshd did not come up"
            time.sleep(0.2)
        yield options
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=10)


def test_two_nodes_pdsh_hostfile(tmp_path, two_nodes, sshd_on_each_node):
    """``deepspeed --hostfile`` from node 0: pdsh starts one rank per node over ssh."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{SUBNET}.1 slots=1\n{SUBNET}.2 slots=1\n")
    env = job_env(PDSH_SSH_ARGS_APPEND=sshd_on_each_node)
    # What the remote shells need, through DeepSpeed's .deepspeed_env mechanism (PYTHON* is exported anyway).
    remote = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": LINK, "HF_HUB_OFFLINE": "1"}
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        remote["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    env_file = tmp_path / "deepspeed_env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in remote.items()))
    env["DS_ENV_FILE"] = str(env_file)
    cmd = ["ip", "netns", "exec", two_nodes[0], "deepspeed", "--hostfile", str(hostfile), "--no_ssh_check"]
    cmd += ["--master_addr", f"{SUBNET}.1", "--master_port", str(_free_port())]
    cmd += [WORKER, "--out", str(tmp_path), "--stages", "2", "--steps", "3"]
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "pdsh" in result.stdout + result.stderr  # DeepSpeed's own pdsh runner started the ranks
    _check_records(tmp_path)
