"""One rank of a two-process ``channel_pruning`` job (tests/distributed): a tiny ResNet under ``xtc_ds.initialize``
at each ZeRO stage given, ``topk`` channel masks learned from every rank's own batch, then ``redundancy_clean`` on
the engine. Writes ``<out>/rank<R>_stage<S>.json``: the rank's own losses, digests of its parameters and quantized
weights (equal on every rank), kept channels, masked and cleaned logits, shapes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the tiny models)

from configs import resnet_channel_pruning  # noqa: E402
from models import tiny_resnet  # noqa: E402
from replicas import replica_digests  # noqa: E402


def ds_config(stage: int, world: int) -> dict:
    return {
        "train_batch_size": 4 * world,
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": stage},
        "compression_training": {
            "channel_pruning": resnet_channel_pruning("topk", schedule_offset=1),
            "weight_quantization": {
                "shared_parameters": {"enabled": True, "schedule_offset": 0},
                "different_groups": {
                    "wq1": {"params": {"start_bits": 1, "target_bits": 1}, "modules": ["classifier"]}
                },
            },
        },
    }


def run_stage(stage: int, steps: int) -> dict:
    import deepspeed

    from xtc_ds import initialize, redundancy_clean
    from xtc_ds.errors import XtcError

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = tiny_resnet()
    engine, *_ = initialize(
        model=model, config=ds_config(stage, world), optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2)
    )
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(world, 4, 3, 32, 32, generator=generator)  # one batch per rank
    labels = torch.randint(0, 3, (world, 4), generator=generator)
    losses = []
    for _ in range(steps):
        loss = engine(pixel_values=pixels[rank], labels=labels[rank]).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())  # this rank's own batch
    owners = [module for name, module in model.named_modules() if name.endswith("layer.0.convolution")]
    masks = [owner.channel_pruning for owner in owners]
    with deepspeed.zero.GatheredParameters([mask.scores for mask in masks]):
        kept = [mask.kept().tolist() for mask in masks]
    engine.eval()
    with torch.no_grad():
        masked = engine(pixel_values=pixels[0]).logits.reshape(-1).tolist()
    record = {"stage": stage, "rank": rank, "losses": losses, "kept": kept, "replicas": replica_digests(model)}
    try:
        redundancy_clean(engine)
    except XtcError as err:  # ZeRO-3 on a DeepSpeed too old to re-partition the smaller weights
        return {**record, "refused": str(err)}
    with torch.no_grad():
        cleaned = engine(pixel_values=pixels[0]).logits.reshape(-1).tolist()
    shapes = {
        name: list(getattr(module.weight, "ds_shape", module.weight.shape))
        for name, module in model.resnet.encoder.stages[0].layers[0].layer.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d))
    }
    return {**record, "masked": masked, "cleaned": cleaned, "shapes": shapes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default="0,3")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    import deepspeed

    from xtc_ds.distributed import init_distributed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip its 100 s first-use build
    init_distributed(timedelta(seconds=600), dist_backend="gloo")  # a liveness bound on a busy machine
    for stage in (int(s) for s in args.stages.split(",")):
        record = run_stage(stage, args.steps)
        (Path(args.out) / f"rank{record['rank']}_stage{stage}.json").write_text(json.dumps(record))
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as xtc_worker.py: skip interpreter teardown once every result is on disk


if __name__ == "__main__":
    main()
