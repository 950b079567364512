"""Training throughput of random vs length-grouped batches (``--group_by_length``) on real SST-2 rows.

Usage: ``python benchmarks/bench_batching.py [--data_dir ../shared/data/glue] [--steps 20] [--rounds 3]
[--seq 64] [--batch 32]``

Both orders come from the pipeline's ``EpochBatches`` over the whole SST-2 training set, each batch cut to its
longest example as in training. Padding is counted over a whole epoch; throughput is the real MiniLM's
1-bit-W/8-bit-A QAT + KD step (the XTC student's) on each order's batches, in interleaved rounds of ``--steps``
consecutive steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_train_step import W1A8_KD, classifier, train_step
from transformers import AutoTokenizer

import xtc_ds
from xtc_ds.recipes.classification.batches import EpochBatches
from xtc_ds.recipes.classification.data import encode, get_task, load_glue, trim_padding
from xtc_ds.recipes.classification.models import default_model_path

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(GLUE_DIR), help="GLUE root with SST-2/train.tsv")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per order per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seq", type=int, default=64, help="max_seq_length")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not (Path(args.data_dir) / "SST-2" / "train.tsv").exists():
        raise SystemExit(f"SST-2 not found: {args.data_dir}/SST-2/train.tsv (pass --data_dir GLUE_ROOT)")

    sst2 = get_task("sst2")
    path = str(default_model_path())
    train = encode(load_glue(sst2, args.data_dir)["train"], AutoTokenizer.from_pretrained(path), args.seq, sst2.task)
    lengths = train["attention_mask"].sum(dim=1)
    orders = {
        "random": EpochBatches(len(lengths), args.batch, 1, 0, 1, seed=42),
        "grouped by length": EpochBatches(len(lengths), args.batch, 1, 0, 1, seed=42, lengths=lengths),
    }
    steps_per_epoch = orders["random"].steps_per_epoch
    padded = {
        name: sum(int(lengths[b].max()) for _, (b,) in order.iterate(0, steps_per_epoch)) / steps_per_epoch
        for name, order in orders.items()
    }

    torch.manual_seed(0)
    teacher = classifier(path, eager=True).eval().requires_grad_(False)
    student = xtc_ds.init_compression(classifier(path, eager=True), W1A8_KD).train()
    step = train_step(student, teacher, xtc_ds.DistillationLoss(W1A8_KD))
    batches = {name: order.iterate(0, steps_per_epoch) for name, order in orders.items()}
    seconds = dict.fromkeys(orders, 0.0)
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, iterator in batches.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                _, (indices,) = next(iterator)
                step(trim_padding({key: value[indices] for key, value in train.items()}))
            if round_:
                seconds[name] += time.perf_counter() - start

    examples = args.rounds * args.steps * args.batch
    print(
        f"SST-2 train ({len(lengths)} rows, mean {lengths.float().mean():.1f} tokens at max_seq_length {args.seq}), "
        f"MiniLM-L6 W1A8 QAT + KD, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{args.rounds}x{args.steps} steps per order"
    )
    print(f"{'batch order':<18} {'mean batch length':>18} {'examples/s':>11} {'vs random':>10}")
    base = examples / seconds["random"]
    for name in orders:
        rate = examples / seconds[name]
        print(f"{name:<18} {padded[name]:>18.1f} {rate:>11.1f} {rate / base:>9.2f}x")


if __name__ == "__main__":
    main()
