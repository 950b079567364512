"""What pruning buys at inference: packed 1-bit students with and without half their heads / FFN rows removed.

Usage: ``python benchmarks/bench_pruned.py [--rounds 9] [--seq 128] [--batches 1 32] [--packed LABEL=DIR ...]``

By default the students are built from the real MiniLM-L6 with the shipped recipes, untrained (size and speed do
not depend on training): ``ds_xtc_1bit.json``, ``ds_xtc_1bit_heads50.json``, ``ds_xtc_1bit_ffn50.json`` and both
prunings together, each ``redundancy_clean``ed, exported with ``export_packed`` and loaded with ``load_packed``.
``--packed LABEL=DIR`` benchmarks exported folders instead (e.g. the ``packed/`` of trained runs). One process, the
same inputs for every variant, interleaved rounds, median forward time under ``torch.inference_mode``; ratios to
fp32 PyTorch and to the first packed model (the unpruned one); file size of ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch
from _models import minilm
from bench_inference import median_times

from xtc_ds import CompressionScheduler, export_packed, init_compression, load_packed, redundancy_clean

RECIPES = Path(__file__).resolve().parents[1] / "ds_configs"


def _recipe(*names: str) -> dict:
    """``ds_xtc_1bit.json`` plus the pruning sections of the named recipes, without KD (nothing is trained)."""
    config = json.loads((RECIPES / "ds_xtc_1bit.json").read_text())
    section = config["compression_training"]
    section["knowledge_distillation"]["enabled"] = False
    for name in names:
        extra = json.loads((RECIPES / name).read_text())["compression_training"]
        section.update({key: extra[key] for key in ("row_pruning", "head_pruning") if key in extra})
    return config


def _packed(model: torch.nn.Module, config: dict, folder: Path) -> Path:
    student = copy.deepcopy(model)
    init_compression(student, config)
    CompressionScheduler(student).step()
    redundancy_clean(student)
    return export_packed(student, None, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--packed", nargs="*", default=[], help="LABEL=DIR of exported folders to compare instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    fp32 = minilm()
    with tempfile.TemporaryDirectory() as tmp:
        if args.packed:
            folders = {label: Path(path) for label, path in (item.split("=", 1) for item in args.packed)}
        else:
            recipes = {
                "W1A8": (),
                "W1A8 heads 50%": ("ds_xtc_1bit_heads50.json",),
                "W1A8 FFN rows 50%": ("ds_xtc_1bit_ffn50.json",),
                "W1A8 heads + FFN 50%": ("ds_xtc_1bit_heads50.json", "ds_xtc_1bit_ffn50.json"),
            }
            folders = {
                label: _packed(fp32, _recipe(*names), Path(tmp) / f"p{i}")
                for i, (label, names) in enumerate(recipes.items())
            }
        variants = {"fp32": fp32, **{label: load_packed(folder) for label, folder in folders.items()}}
        first = next(iter(folders))
        sizes = {label: (folder / "model.safetensors").stat().st_size / 1e6 for label, folder in folders.items()}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {args.seq}, {args.rounds} rounds")
        print(f"| batch | model | ms | vs fp32 | vs {first} | file MB |")
        print("|---|---|---|---|---|---|")
        for batch in args.batches:
            ids = torch.randint(
                1000, fp32.config.vocab_size, (batch, args.seq), generator=torch.Generator().manual_seed(0)
            )
            median = median_times(variants, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, args.rounds)
            for label in variants:
                size = f"{sizes[label]:.2f}" if label in sizes else ""
                print(
                    f"| {batch} | {label} | {median[label] * 1e3:.1f} | {median['fp32'] / median[label]:.2f}x | "
                    f"{median[first] / median[label]:.2f}x | {size} |"
                )


if __name__ == "__main__":
    main()
