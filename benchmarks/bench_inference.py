"""Inference speed, file size and load memory on CPU: PyTorch and ONNX Runtime, fp32, int8 dynamic and XTC.

Usage: ``python benchmarks/bench_inference.py [--rounds 5] [--seq 128] [--batches 1 32] [--models minilm base]
[--no-onnx] [--flavours avx2 generic ...]``

One process, the same inputs for every variant, timed in interleaved rounds (median forward time under
``torch.inference_mode``, ratio to fp32). Variants: the fp32 model; ``torch.ao.quantization.quantize_dynamic``
(int8 weights, per-batch int8 activations, fbgemm) on every Linear; the QAT model itself (fake-quantized W1A8:
what evaluation during training runs); and the XTC 1-/2-bit-weight, 8-bit per-token activation model exported
with ``export_packed`` and loaded with ``load_packed``, on the best CPU kernel flavour this machine has and, for
W1A8, side by side on each other flavour it executes (``--flavours``; e.g. AVX2 and the portable loops on an
AVX-512 VNNI CPU: what a fleet of older CPUs would run). With ``onnxruntime`` installed (the ``[onnx]`` extra)
also ONNX Runtime: the fp32 model exported by ``torch.onnx.export`` with eager attention (ONNX Runtime runs that
export faster than the default SDPA one, so it is the stronger baseline); that file after
``onnxruntime.quantization.quantize_dynamic`` (int8 weights and activations: what a BERT user deploys on CPU
today); and ``xtc_ds.export_onnx`` of the packed W1A8 / W2A8 models, with ``MatMulNBits`` (``accuracy_level`` 4)
and with ``linear_op="MatMulIntegerToFloat"`` ("int8 GEMM": ONNX Runtime's int8 kernel on weights rebuilt at load
from the 1/2-bit codes in the file; "fp16": of a W1A8 model packed with float16 unquantized tensors).
ONNX Runtime sessions get the same thread count as torch. Peak memory of loading each is measured in a fresh
subprocess: peak RSS while loading and running one short forward pass (which touches every weight), minus the
RSS of the interpreter with torch, transformers, onnxruntime and the BERT model code imported. File size is the
model's weights file (``model.safetensors`` or ``model.onnx``). Models: the real MiniLM-L6 and a BERT-base-shaped one.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from _models import bert_base, compressed, compression_config, minilm

from xtc_ds import export_onnx, export_packed, load_packed
from xtc_ds.ops import builder, native

_LOADERS = {
    "fp32": "from transformers import AutoModelForSequenceClassification as A; m = A.from_pretrained(path)",
    "int8 dynamic": (
        "from transformers import AutoModelForSequenceClassification as A; m = A.from_pretrained(path); "
        "m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)"
    ),
    "packed": "from xtc_ds import load_packed; m = load_packed(path)",
    "onnx": (
        "import onnxruntime as ort; s = ort.InferenceSession(path, providers=['CPUExecutionProvider']); "
        "names = [i.name for i in s.get_inputs()]; "
        "m = lambda input_ids: s.run(None, {n: (input_ids * (n != 'token_type_ids')).numpy() for n in names})"
    ),
}
_RSS = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
_RESET_PEAK = "open('/proc/self/clear_refs', 'w').write('5')"  # Linux: VmHWM := VmRSS
_PEAK = "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"


def _load_peak_mb(kind: str, path: Path) -> float:
    """Peak RSS growth (MB) of loading ``path`` the way ``kind`` does, in a fresh interpreter."""
    prelude = (  # imports (transformers loads its model code lazily, >100 MB) are not part of loading a model
        "import warnings; warnings.simplefilter('ignore'); import torch, transformers, xtc_ds; "
        "import importlib.util; importlib.util.find_spec('onnxruntime') and __import__('onnxruntime'); "
        "from transformers import BertForSequenceClassification; "
    )
    run = "m(input_ids=torch.ones(1, 16, dtype=torch.long))"
    script = f"{prelude}path = {str(path)!r}; {_RSS}; {_RESET_PEAK}; {_LOADERS[kind]}; {run}; {_PEAK}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    before, peak = int(out[-2]), int(out[-1])
    return (peak - before) / 1024


_SETTLE_S = 0.05  # before each timed call: the previous variant's spinning worker threads (ORT, OpenMP) go idle


def _time(model: Any, inputs: dict[str, torch.Tensor]) -> float:
    time.sleep(_SETTLE_S)
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def median_times(variants: dict[str, Any], inputs: dict[str, torch.Tensor], rounds: int) -> dict[str, float]:
    """Median forward seconds of each variant: one warm-up call each, then ``rounds`` interleaved rounds."""
    for model in variants.values():
        _time(model, inputs)
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, model in variants.items():
            times[label].append(_time(model, inputs))
    return {label: statistics.median(values) for label, values in times.items()}


class _Flavoured:
    """A packed model whose CPU ops run on one kernel flavour for every call (``native.use_cpu_flavour``)."""

    def __init__(self, model: torch.nn.Module, isa: str) -> None:
        self.model, self.isa = model, isa

    def __call__(self, **inputs: torch.Tensor) -> Any:
        with native.use_cpu_flavour(self.isa):
            return self.model(**inputs)


class _OrtModel:
    """An ONNX Runtime session called like a Hugging Face model (keyword tensors in, logits out)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [arg.name for arg in self.session.get_inputs()]

    def __call__(self, **inputs: torch.Tensor) -> Any:
        feed = {name: inputs.get(name, torch.zeros_like(inputs["input_ids"])).numpy() for name in self.names}
        return self.session.run(None, feed)[0]


def _onnx_variants(
    model: torch.nn.Module, packed: dict[int, Path], half: Path, tmp: Path, name: str
) -> dict[str, tuple]:
    """ONNX Runtime fp32, int8 dynamic and XTC variants (``half``: a float16 packed W1A8 export):
    (callable, loader kind, file)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = tmp / f"{name}-fp32.onnx"
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")  # ONNX Runtime fuses eager attention better than the SDPA export
    ids = torch.ones(2, 8, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in range(3)),
            dynamo=True,
            external_data=False,
        )
    int8 = tmp / f"{name}-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    variants = {"ORT fp32": fp32, "ORT int8 dynamic": int8}
    for bits, folder in packed.items():
        variants[f"ORT XTC W{bits}A8"] = export_onnx(folder, tmp / f"{name}-onnx-w{bits}") / "model.onnx"
    for bits, folder in packed.items():
        int8 = export_onnx(folder, tmp / f"{name}-onnx-int8-w{bits}", linear_op="MatMulIntegerToFloat")
        variants[f"ORT XTC W{bits}A8 int8 GEMM"] = int8 / "model.onnx"
    int8 = export_onnx(half, tmp / f"{name}-onnx-int8-fp16", linear_op="MatMulIntegerToFloat")
    variants["ORT XTC W1A8 int8 fp16"] = int8 / "model.onnx"
    return {key: (_OrtModel(path), "onnx", path) for key, path in variants.items()}


def _file_mb(kind: Optional[str], path: Path) -> Optional[float]:
    """Size of the weights file a variant loads (None for torch.ao int8, which is built in memory, and for a
    second kernel flavour of a packed model already in the table)."""
    if kind in ("int8 dynamic", None):
        return None
    file = path if kind == "onnx" else path / "model.safetensors"
    return file.stat().st_size / 1e6


def bench(
    name: str,
    model: torch.nn.Module,
    batches: list[int],
    seq: int,
    rounds: int,
    tmp: Path,
    onnx: bool,
    flavours: list[str],
) -> list[tuple]:
    fp32_dir = tmp / f"{name}-fp32"
    model.save_pretrained(fp32_dir)
    variants = {"fp32": (model, "fp32", fp32_dir)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    variants["int8 dynamic"] = (dynamic, "int8 dynamic", fp32_dir)
    packed = {}
    variants["fake-quant W1A8"] = (compressed(model, 1), None, fp32_dir)
    for bits in (1, 2):
        folder = export_packed(compressed(model, bits), compression_config(bits), tmp / f"{name}-w{bits}")
        variants[f"packed W{bits}A8"] = (load_packed(folder), "packed", folder)
        packed[bits] = folder
    for isa in flavours:
        variants[f"packed W1A8 {isa}"] = (_Flavoured(variants["packed W1A8"][0], isa), None, packed[1])
    if onnx:
        half = export_packed(compressed(model, 1), compression_config(1), tmp / f"{name}-w1-fp16", dtype=torch.float16)
        variants.update(_onnx_variants(model, packed, half, tmp, name))
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
            first = batch == batches[0]
            peak = _load_peak_mb(kind, path) if first and kind is not None else None
            size = _file_mb(kind, path) if first else None
            rows.append((name, batch, key, median * 1e3, base / median, size, peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", choices=("minilm", "base"), default=["minilm", "base"])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime variants")
    best = builder.cpu_isa()
    parser.add_argument(
        "--flavours",
        nargs="*",
        choices=builder.supported_isas(),
        default=[isa for isa in builder.supported_isas() if isa != best],
        help=f"other CPU kernel flavours to time the W1A8 packed model on (default: all but {best}, the one in use)",
    )
    args = parser.parse_args()
    if args.onnx and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed (pip install 'xtc_ds[onnx]'): ONNX Runtime variants skipped")
        args.onnx = False
    builders = {"minilm": ("MiniLM-L6", minilm), "base": ("BERT-base", bert_base)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            name, build = builders[key]
            rows += bench(name, build(), args.batches, args.seq, args.rounds, Path(tmp), args.onnx, args.flavours)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {args.seq}, median of {args.rounds}")
    print(f"CPU kernel flavour of 'packed': {best} (this CPU runs {', '.join(builder.supported_isas())})")
    print(f"{'model':<10} {'batch':>5} {'variant':<26} {'ms':>9} {'speed-up':>9} {'file MB':>8} {'load peak MB':>13}")
    for name, batch, key, ms, speedup, size, peak in rows:
        peak_text = "" if peak is None else f"{peak:.0f}"
        size_text = "" if size is None else f"{size:.1f}"
        print(f"{name:<10} {batch:>5} {key:<26} {ms:>9.1f} {speedup:>8.2f}x {size_text:>8} {peak_text:>13}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
