"""What ``channel_pruning`` buys: a ResNet-18-shaped Hugging Face ``ResNetForImageClassification`` with half the
channels of every basic block's first convolution removed (with its BatchNorm2d and the second convolution's
inputs) against the dense model.

Usage: ``python benchmarks/bench_channels.py [--rounds 9] [--image 224] [--batches 1 8]``

Random initialization (size and speed do not depend on training): the pruned model is ``init_compression``ed with
``l1`` channel masks from step 0, ``redundancy_clean``ed and saved with ``save_pretrained``; both are timed in one
process on the same inputs, interleaved rounds, median forward time under ``torch.inference_mode``, and the
cleaned model's logits are checked against the masked model's first.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import _models  # noqa: F401  (puts tests/ on the path, for the configs shared with the tests)
import torch
from bench_inference import median_times

from configs import resnet_channel_pruning
from xtc_ds import init_compression, load_cleaned, redundancy_clean

CHANNELS = {"compression_training": {"channel_pruning": resnet_channel_pruning()}}


def resnet18() -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000)
    return ResNetForImageClassification(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = resnet18()
    pruned = init_compression(copy.deepcopy(dense), CHANNELS).eval()
    check = torch.randn(2, 3, args.image, args.image, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        masked = pruned(pixel_values=check).logits
    redundancy_clean(pruned)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for label, model in (("dense", dense), ("channels 50%", pruned)):
            model.save_pretrained(Path(tmp) / label)
            sizes[label] = (Path(tmp) / label / "model.safetensors").stat().st_size / 1e6
        reloaded = load_cleaned(Path(tmp) / "channels 50%")
    with torch.inference_mode():
        gap = (reloaded(pixel_values=check).logits - masked).abs().max().item()
    variants = {"dense": dense, "channels 50%": reloaded}
    params = {label: sum(p.numel() for p in model.parameters()) / 1e6 for label, model in variants.items()}
    size = f"{args.image}x{args.image}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {size}, {args.rounds} rounds")
    print(f"cleaned (reloaded with load_cleaned) vs masked logits: max abs difference {gap:.2e}")
    print("| batch | model | params M | file MB | ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        median = median_times(variants, {"pixel_values": torch.randn(batch, 3, args.image, args.image)}, args.rounds)
        for label in variants:
            print(
                f"| {batch} | {label} | {params[label]:.2f} | {sizes[label]:.1f} | {median[label] * 1e3:.1f} | "
                f"{median['dense'] / median[label]:.2f}x |"
            )


if __name__ == "__main__":
    main()
