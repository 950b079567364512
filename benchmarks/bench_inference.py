"""Inference speed and load memory on CPU: fp32 vs PyTorch dynamic int8 vs packed 1-bit / 2-bit, side by side.

Usage: ``python benchmarks/bench_inference.py [--rounds 5] [--seq 128] [--batches 1 32] [--models minilm base]``

One process, the same inputs for every variant, timed in interleaved rounds (median forward time under
``torch.inference_mode``, ratio to fp32). Variants: the fp32 model; ``torch.ao.quantization.quantize_dynamic``
(int8 weights, per-batch int8 activations, fbgemm) on every Linear; and the XTC 1-/2-bit-weight, 8-bit per-token
activation model exported with ``export_packed`` and loaded with ``load_packed`` (the AVX512-VNNI packed kernel
when built). Peak memory of loading each is measured in a fresh subprocess: peak RSS while loading and running
one short forward pass (which touches every weight), minus the RSS of the interpreter with torch, transformers
and the BERT model code imported. Models: the real MiniLM-L6 and a BERT-base-shaped one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _models import bert_base, compressed, compression_config, minilm

from xtc_ds import export_packed, load_packed

_LOADERS = {
    "fp32": "from transformers import AutoModelForSequenceClassification as A; m = A.from_pretrained(path)",
    "int8 dynamic": (
        "from transformers import AutoModelForSequenceClassification as A; m = A.from_pretrained(path); "
        "m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)"
    ),
    "packed": "from xtc_ds import load_packed; m = load_packed(path)",
}
_RSS = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
_RESET_PEAK = "open('/proc/self/clear_refs', 'w').write('5')"  # Linux: VmHWM := VmRSS
_PEAK = "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


def _load_peak_mb(kind: str, path: Path) -> float:
    """Peak RSS growth (MB) of loading ``path`` the way ``kind`` does, in a fresh interpreter."""
    prelude = (  # imports (transformers loads its model code lazily, >100 MB) are not part of loading a model
        "import warnings; warnings.simplefilter('ignore'); import torch, transformers, xtc_ds; "
        "from transformers import BertForSequenceClassification; "
    )
    run = "m(input_ids=torch.ones(1, 16, dtype=torch.long))"
    script = f"{prelude}path = {str(path)!r}; {_RSS}; {_RESET_PEAK}; {_LOADERS[kind]}; {run}; {_PEAK}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    before, peak = int(out[-2]), int(out[-1])
    return (peak - before) / 1024


def _time(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def bench(name: str, model: torch.nn.Module, batches: list[int], seq: int, rounds: int, tmp: Path) -> list[tuple]:
    fp32_dir = tmp / f"{name}-fp32"
    model.save_pretrained(fp32_dir)
    variants = {"fp32": (model, "fp32", fp32_dir)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    variants["int8 dynamic"] = (dynamic, "int8 dynamic", fp32_dir)
    for bits in (1, 2):
        folder = export_packed(compressed(model, bits), compression_config(bits), tmp / f"{name}-w{bits}")
        variants[f"packed W{bits}A8"] = (load_packed(folder), "packed", folder)
    rows = []
    for batch in batches:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times = {key: [] for key in variants}
        for variant, _, _ in variants.values():
            _time(variant, inputs)  # warm-up: kernel build/load, prepack, allocator
        for _ in range(rounds):
            for key, (variant, _, _) in variants.items():
                times[key].append(_time(variant, inputs))
        base = statistics.median(times["fp32"])
        for key, (_, kind, path) in variants.items():
            median = statistics.median(times[key])
            peak = _load_peak_mb(kind, path) if batch == batches[0] else None
            rows.append((name, batch, key, median * 1e3, base / median, peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", choices=("minilm", "base"), default=["minilm", "base"])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    builders = {"minilm": ("MiniLM-L6", minilm), "base": ("BERT-base", bert_base)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            name, build = builders[key]
            rows += bench(name, build(), args.batches, args.seq, args.rounds, Path(tmp))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {args.seq}, median of {args.rounds}")
    print(f"{'model':<10} {'batch':>5} {'variant':<14} {'ms':>9} {'speed-up':>9} {'load peak MB':>13}")
    for name, batch, key, ms, speedup, peak in rows:
        peak_text = "" if peak is None else f"{peak:.0f}"
        print(f"{name:<10} {batch:>5} {key:<14} {ms:>9.1f} {speedup:>8.2f}x {peak_text:>13}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
