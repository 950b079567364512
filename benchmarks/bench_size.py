"""Checkpoint size: packed 1/2-bit exports vs the fp32 safetensors of the same model.

Usage: ``python benchmarks/bench_size.py``

Rows: the real MiniLM-L6 (1-bit and 2-bit Linear layers and word embeddings), a BERT-base-shaped model
(12 layers, hidden 768) and its 6-layer student (layer reduction), the student compared with the 12-layer
fp32 file as XTC reports it; the last rows also quantize the pooler. Unquantized tensors (position/type
embeddings, LayerNorm, pooler, classifier) are stored in fp32 or fp16 ("rest"). Columns: the whole-file
ratio and the paper-style ratio (quantized tensors only).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _models import bert_base, compressed, compression_config, half_depth_student, minilm

from xtc_ds import export_packed
from xtc_ds.size import size_report


def _fp32_bytes(model: torch.nn.Module, folder: Path) -> int:
    model.save_pretrained(folder)
    return (folder / "model.safetensors").stat().st_size


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = bert_base()
        student = half_depth_student(base)
        models = [
            ("MiniLM-L6", minilm(), None, False),
            ("BERT-base 12L", base, None, False),
            ("BERT-base -> 6L student", student, base, False),
            ("6L student + pooler", student, base, True),
        ]
        for name, model, reference, pooler in models:
            fp32 = _fp32_bytes(reference if reference is not None else model, tmp / f"{name}-fp32")
            for bits in (1, 2):
                qat = compressed(model, bits, pooler)
                for dtype in (torch.float32, torch.float16):
                    config = compression_config(bits, pooler)
                    folder = export_packed(qat, config, tmp / f"{name}-{bits}-{dtype}", dtype=dtype)
                    report = size_report(folder)
                    rows.append((name, bits, str(dtype)[6:], fp32, report.file_bytes, report.quantized_ratio))
    header = ("model", "bits", "rest", "fp32 MB", "packed MB", "file ratio", "quantized-only")
    print("{:<24} {:>4} {:>8} {:>9} {:>10} {:>11} {:>15}".format(*header))
    for name, bits, rest, fp32, packed, quantized in rows:
        print(
            f"{name:<24} {bits:>4} {rest:>8} {fp32 / 1e6:>9.2f} {packed / 1e6:>10.2f} {fp32 / packed:>10.1f}x "
            f"{quantized:>14.1f}x"
        )


if __name__ == "__main__":
    main()
