"""One rank of bench_scaling.py: the MiniLM XTC student (ds_configs/ds_xtc.json) training with KD for timing."""

from __future__ import annotations

import argparse
import copy
import json
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--micro_batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    import deepspeed
    from transformers import AutoModelForSequenceClassification

    from xtc_ds import build_student, initialize
    from xtc_ds.config import load_deepspeed_config
    from xtc_ds.distributed import init_distributed
    from xtc_ds.recipes.classification.models import default_model_path

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    init_distributed(timedelta(minutes=5), dist_backend="gloo")
    world = dist.get_world_size()
    config = copy.deepcopy(load_deepspeed_config("ds_configs/ds_xtc.json"))
    config.update(train_micro_batch_size_per_gpu=args.micro_batch, train_batch_size=args.micro_batch * world)
    config["zero_optimization"] = {"stage": args.stage}
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        default_model_path(), num_labels=2, attn_implementation="eager"
    )
    student = build_student(teacher, config)
    engine, *_ = initialize(
        model=student, config=config, teacher_model=teacher, optimizer=torch.optim.AdamW(student.parameters(), lr=5e-5)
    )
    ids = torch.randint(1000, 30000, (args.micro_batch, args.seq))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times = []
    for _ in range(args.warmup + args.steps):
        dist.barrier()
        start = time.perf_counter()
        loss = engine.xtc.student_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        step = sorted(times[args.warmup :])[len(times[args.warmup :]) // 2]
        record = {
            "stage": args.stage,
            "world": world,
            "step_s": step,
            "samples_per_s": args.micro_batch * world / step,
        }
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
