"""How much a busy machine slows the packed kernels, beside PyTorch's own fp32 and int8 dynamic forwards.

Usage: ``python benchmarks/bench_busy.py [--rounds 5] [--seq 128] [--batch 1] [--threads 2] [--flavours ...]``

Shared CPUs are the rule in serving. A packed forward whose OpenMP pool fought PyTorch's (a second runtime, or
its own thread count) would slow down far more than PyTorch under the same load. Each round times every
variant (real MiniLM-L6: fp32, ``torch.ao`` int8 dynamic, the XTC W1A8 packed model on each CPU kernel flavour)
once on an idle machine and once while a competing process runs a ``--threads``-thread fp32 matmul loop;
the table gives the medians and each variant's slowdown (busy / idle), and that slowdown relative to fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _models import compressed, compression_config, minilm
from bench_inference import _Flavoured, _time

from xtc_ds import export_packed, load_packed
from xtc_ds.ops import builder

_COMPETITOR = (
    "import sys, torch; torch.set_num_threads({threads}); a = torch.randn(1024, 1024); "
    "print('ready', flush=True); sys.stdout.close()\nwhile True: a @ a"
)


def _median_ms(model: Any, inputs: dict[str, torch.Tensor], calls: int) -> float:
    return statistics.median(_time(model, inputs) for _ in range(calls)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="forward passes per variant and round (median)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="threads of the competing job")
    parser.add_argument("--flavours", nargs="*", choices=builder.supported_isas(), default=builder.supported_isas())
    args = parser.parse_args()

    model = minilm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with tempfile.TemporaryDirectory() as tmp:
        packed = load_packed(export_packed(compressed(model, 1), compression_config(1), Path(tmp) / "w1"))
    variants = {"fp32": model, "int8 dynamic": dynamic}
    variants.update({f"packed W1A8 {isa}": _Flavoured(packed, isa) for isa in args.flavours})
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (args.batch, args.seq), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for variant in variants.values():
        _time(variant, inputs)  # warm-up: kernel build/load, prepack
    times: dict[str, dict[str, list[float]]] = {key: {"idle": [], "busy": []} for key in variants}
    competitor = [sys.executable, "-c", _COMPETITOR.format(threads=args.threads)]
    for _ in range(args.rounds):
        for key, variant in variants.items():
            times[key]["idle"].append(_median_ms(variant, inputs, args.calls))
        with subprocess.Popen(competitor, stdout=subprocess.PIPE, text=True) as job:
            job.stdout.readline()  # the competitor's matmul loop has started
            time.sleep(0.5)
            for key, variant in variants.items():
                times[key]["busy"].append(_median_ms(variant, inputs, args.calls))
            job.kill()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads here, competitor {args.threads} threads, "
        f"MiniLM-L6, batch {args.batch}, seq {args.seq}, median of {args.rounds} rounds x {args.calls} calls"
    )
    print(f"{'variant':<24} {'idle ms':>9} {'busy ms':>9} {'slowdown':>9} {'vs fp32':>8}")
    fp32 = statistics.median(times["fp32"]["busy"]) / statistics.median(times["fp32"]["idle"])
    for key in variants:
        idle, busy = statistics.median(times[key]["idle"]), statistics.median(times[key]["busy"])
        print(f"{key:<24} {idle:>9.1f} {busy:>9.1f} {busy / idle:>8.2f}x {busy / idle / fp32:>7.2f}x")


if __name__ == "__main__":
    main()
