"""Data-parallel scaling of XTC training on CPU: samples/s with 1 and 2 processes at ZeRO stages 0-3.

Usage: ``python benchmarks/bench_scaling.py [--stages 0 1 2 3] [--steps 6] [--micro_batch 16]``

Each cell is one ``deepspeed --num_gpus N`` launch of ``_scaling_worker.py``: the MiniLM-L6 teacher and the
3-layer 1-bit-W/8-bit-A student of ``ds_configs/ds_xtc.json`` training with one-stage KD on random tokens
(seq 64), median step time after warm-up, gloo on loopback. The machine's cores are split evenly: 1 process
uses all of them as OpenMP threads, 2 processes half each, so the table shows what data parallelism costs or
gains on the same hardware. On a GPU machine the worker runs unchanged with NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(stage: int, procs: int, args: argparse.Namespace, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(key, None)
    cmd = ["deepspeed", "--num_gpus", str(procs), "--master_port", str(_port())]
    cmd += [str(ROOT / "benchmarks" / "_scaling_worker.py"), "--stage", str(stage), "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--micro_batch", str(args.micro_batch)]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode:
        sys.exit(f"stage {stage}, {procs} processes failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return {**json.loads(out.read_text()), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro_batch", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            single = _run(stage, 1, args, Path(tmp) / f"s{stage}p1.json")
            double = _run(stage, 2, args, Path(tmp) / f"s{stage}p2.json")
            rows.append((stage, single, double))
    print(f"MiniLM XTC student (ds_xtc.json), KD, seq 64, micro batch {args.micro_batch} per process, CPU gloo")
    print(f"{'ZeRO':>4} {'1 proc samples/s':>17} {'2 procs samples/s':>18} {'2 vs 1':>7}")
    for stage, single, double in rows:
        ratio = double["samples_per_s"] / single["samples_per_s"]
        print(f"{stage:>4} {single['samples_per_s']:>17.1f} {double['samples_per_s']:>18.1f} {ratio:>6.2f}x")
    print(f"threads per process: 1 proc {rows[0][1]['threads']}, 2 procs {rows[0][2]['threads']}")


if __name__ == "__main__":
    main()
