"""One rank of a multi-process XTC job (tests/distributed): tiny BERT teacher -> 1-bit student with KD.

Runs the same fixed-seed job once per ZeRO stage in one process group and writes
``<out>/rank<R>_stage<S>.json`` with the rank's own step losses, digests of its parameters and quantized weights
after training (equal on every rank), what the weight quantizer saw and the number of distinct values per quantized
weight. ``--die_rank/--die_step`` kill one rank mid-run,
``--hang_rank/--hang_step`` stall one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the tiny models)

from configs import recipe  # noqa: E402
from models import tiny_bert  # noqa: E402
from replicas import replica_digests  # noqa: E402

MICRO_BATCH = 8


PRUNING = {
    "head_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 2, "method": "topk", "num_heads": 2},
        "different_groups": {
            "hp1": {
                "params": {"dense_ratio": 0.5},
                "modules": ["@attention.output"],
                "related_modules": [["@attention.qkv"]],
            }
        },
    },
    "row_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 2, "method": "l1"},
        "different_groups": {
            "rp1": {"params": {"dense_ratio": 0.5}, "modules": ["@ffn.in"], "related_modules": [["@ffn.out"]]}
        },
    },
}
"""Half the heads and half the FFN rows, from step 2 (``--prune``)."""
SPARSE = {
    "shared_parameters": {"enabled": True, "schedule_offset": 2, "method": "topk"},
    "different_groups": {"sp1": {"params": {"dense_ratio": 0.5}, "modules": ["@layers"]}},
}
"""Half the single weights of every Linear of the layers, learned scores, from step 2 (``--sparse``)."""
SNIP = {
    "shared_parameters": {
        "enabled": True,
        "schedule_offset": 2,
        "schedule_offset_end": 4,
        "method": "snip_momentum",
        "block_pattern": "4x1",
    },
    "different_groups": {"sp1": {"params": {"dense_ratio": 0.5}, "modules": ["@layers"]}},
}
"""Half the 4x1 blocks of every Linear of the layers by momentum SNIP scores, pruned at steps 2, 3, 4 (``--snip``)."""


def xtc_config(
    stage: int,
    world: int,
    bits: int = 1,
    bf16: bool = False,
    teacher_zero3: bool = False,
    prune: bool = False,
    sparse: bool = False,
    snip: bool = False,
) -> dict:
    """``ds_configs/ds_xtc_1bit.json`` at ``bits``, every tensor partitioned, teacher layers 1 and 3 kept."""
    config = recipe(
        bits=bits,
        train_micro_batch_size_per_gpu=MICRO_BATCH,
        train_batch_size=MICRO_BATCH * world,
        zero_optimization={"stage": stage, "stage3_param_persistence_threshold": 0},
        bf16={"enabled": bf16},
    )
    config["compression_training"]["layer_reduction"].update(enabled=True, keep_number_layer=2, teacher_layer=[1, 3])
    config["compression_training"]["knowledge_distillation"]["teacher_zero3"] = teacher_zero3
    if prune:
        config["compression_training"].update(PRUNING)
    if sparse or snip:
        config["compression_training"]["sparse_pruning"] = SNIP if snip else SPARSE
    return config


def _weight_record(module: torch.nn.Module) -> dict:
    """Shape and distinct values of the weight the forward pass uses (gathered under ZeRO-3)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([module.weight]), torch.no_grad():
        weight = module.quantized_weight()
        return {"shape": list(weight.shape), "levels": weight.float().unique().numel()}


def run_stage(stage: int, steps: int, args: argparse.Namespace) -> dict:
    from xtc_ds import build_student, initialize

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    teacher = tiny_bert(layers=4)
    config = xtc_config(stage, world, args.bits, args.bf16, args.teacher_zero3, args.prune, args.sparse, args.snip)
    student = build_student(teacher, config)
    for module in student.modules():  # no dropout: a fixed-seed job must give the same losses on every stage
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    engine, *_ = initialize(
        model=student,
        config=config,
        teacher_model=teacher,
        optimizer=torch.optim.AdamW(student.parameters(), lr=args.lr),
    )
    dense = student.bert.encoder.layer[0].intermediate.dense
    seen = []
    dense.weight_quantizer.register_forward_pre_hook(lambda module, inputs: seen.append(list(inputs[0].shape)))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (world, MICRO_BATCH, 16), generator=generator)  # one batch per rank, revisited
    losses = []
    for step in range(steps):
        if rank == args.die_rank and step == args.die_step:
            os._exit(3)
        if rank == args.hang_rank and step == args.hang_step:
            time.sleep(3600)  # stuck, not dead: only the process-group timeout ends the job
        batch = {"input_ids": ids[rank].to(engine.device)}
        loss = engine.xtc.student_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())  # this rank's own batch
    replicas = replica_digests(student)
    weights = {
        name: _weight_record(student.get_submodule(name))
        for name in ("bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.attention.self.query")
    }
    pruned = None
    if args.prune:
        pruned = _pruned_record(engine, student, ids[0], Path(args.out) / f"checkpoint_stage{stage}")
    if args.sparse or args.snip:
        pruned = _sparse_record(engine, student, ids[0])
    exported = exported_bits = None
    if stage == 3 and "refused" not in (pruned or {}):  # gathered on every rank, written by rank 0, seen by all
        from safetensors.torch import load_file

        from xtc_ds import export_packed

        export_packed(engine, config, Path(args.out) / "packed_stage3")
        tensors = load_file(str(Path(args.out) / "packed_stage3" / "model.safetensors"))
        stored = ("packed_weight", "sparse_bitmap", "sparse_values")
        prefix = "bert.encoder.layer.0.intermediate.dense."
        exported = {leaf: list(tensors[prefix + leaf].shape) for leaf in stored if prefix + leaf in tensors}
        exported_bits = json.loads((Path(args.out) / "packed_stage3" / "config.json").read_text())[
            "quantization_config"
        ]["modules"]["bert.encoder.layer.0.intermediate.dense"]["bits"]
    return {
        "pruned": pruned,
        "mpi": "openmpi" if "OMPI_COMM_WORLD_RANK" in os.environ else "mpich" if "PMI_RANK" in os.environ else None,
        "netns": os.readlink("/proc/self/ns/net"),  # distinct per simulated node
        "exported_packed_shape": exported,
        "exported_bits": exported_bits,
        "stage": stage,
        "rank": rank,
        "world": world,
        "losses": losses,
        "replicas": replicas,
        "quantizer_saw": sorted({tuple(shape) for shape in seen}),
        "local_numel": dense.weight.numel(),
        "teacher_local_numel": sum(p.numel() for p in engine.xtc.teacher.parameters()),
        "weights": weights,
    }


def _sparse_record(engine, student: torch.nn.Module, ids: torch.Tensor) -> dict:
    """Sparse topk masks: the kept fraction and the masked logits, then ``redundancy_clean`` on the engine."""
    import deepspeed

    from xtc_ds import redundancy_clean

    query = student.bert.encoder.layer[0].attention.self.query
    saved = engine.xtc.scheduler.state_dict()["pruning_scores"]
    kept = query.sparse_pruning()[0]
    kept_rows = [int(row.sum()) for row in kept]
    engine.eval()
    with torch.no_grad():
        masked = engine(input_ids=ids).logits.float().reshape(-1).tolist()
    redundancy_clean(engine)
    with torch.no_grad():
        cleaned = engine(input_ids=ids).logits.float().reshape(-1).tolist()
    with deepspeed.zero.GatheredParameters([query.weight]):
        zeros = float((query.weight == 0).float().mean())
    return {
        "zeros": zeros,
        "masked": masked,
        "cleaned": cleaned,
        "saved_scores": list(saved["bert.encoder.layer.0.attention.self.query.sparse_pruning"].shape),
        "kept_rows": kept_rows,
    }


def _pruned_record(engine, student: torch.nn.Module, ids: torch.Tensor, checkpoint: Path) -> dict:
    """Kept heads and FFN rows (scores gathered), also after a checkpoint round trip; the masked model's logits,
    then ``redundancy_clean`` on the engine: the cleaned weight shapes and logits."""
    import deepspeed

    from xtc_ds import redundancy_clean
    from xtc_ds.errors import XtcError

    layer = student.bert.encoder.layer[0]
    heads, rows = layer.attention.output.dense.head_pruning, layer.intermediate.dense.row_pruning
    with deepspeed.zero.GatheredParameters([heads.scores]):
        kept_heads = heads.kept().tolist()
    saved = engine.xtc.scheduler.state_dict()["pruning_scores"]
    engine.save_checkpoint(str(checkpoint))
    with torch.no_grad():  # flip the ranking (every rank its partition): only the checkpoint can restore it
        getattr(heads.scores, "ds_tensor", heads.scores).neg_()
    engine.load_checkpoint(str(checkpoint))
    with deepspeed.zero.GatheredParameters([heads.scores]):
        reloaded = heads.kept().tolist()
    engine.eval()
    with torch.no_grad():
        masked = engine(input_ids=ids).logits.float().reshape(-1).tolist()
    try:
        redundancy_clean(engine)
    except XtcError as err:  # ZeRO-3 on a DeepSpeed too old to re-partition the smaller weights
        return {"kept_heads": kept_heads, "kept_rows": rows.kept().tolist(), "refused": str(err)}
    with torch.no_grad():
        cleaned = engine(input_ids=ids).logits.float().reshape(-1).tolist()
    return {
        "kept_heads": kept_heads,
        "kept_heads_reloaded": reloaded,
        "kept_rows": rows.kept().tolist(),
        "saved_scores": {
            name.split("layer.0.")[-1]: list(tensor.shape) for name, tensor in saved.items() if "layer.0." in name
        },
        "masked": masked,
        "cleaned": cleaned,
        "shapes": {
            name: list(getattr(module.weight, "ds_shape", module.weight.shape))
            for name, module in layer.named_modules()
            if isinstance(module, torch.nn.Linear)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--bits", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--teacher_zero3", action="store_true")
    parser.add_argument("--prune", action="store_true")
    parser.add_argument("--sparse", action="store_true")
    parser.add_argument("--snip", action="store_true")
    # the process-group timeout: a liveness bound (a rank of a 2-rank job on a machine busy with other tests can lag
    # its peer by minutes); the fault tests pass 10 s
    parser.add_argument("--timeout_s", type=float, default=600.0)
    parser.add_argument("--die_rank", type=int, default=-1)
    parser.add_argument("--die_step", type=int, default=-1)
    parser.add_argument("--hang_rank", type=int, default=-1)
    parser.add_argument("--hang_step", type=int, default=-1)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    import deepspeed

    from xtc_ds.distributed import init_distributed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip its 100 s first-use build
    init_distributed(timedelta(seconds=args.timeout_s), dist_backend="gloo")
    out = Path(args.out)
    for stage in (int(s) for s in args.stages.split(",")):
        record = run_stage(stage, args.steps, args)
        (out / f"rank{record['rank']}_stage{stage}.json").write_text(json.dumps(record))
    dist.barrier()
    # Every result is on disk and every rank is here. Skip interpreter teardown: with a ZeRO-3-partitioned
    # teacher, C++ destructors at exit occasionally abort ("terminate called without an active exception",
    # about 1 run in 6), which would fail a job whose work is complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
