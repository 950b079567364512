"""xtc_ds.initialize on CPU: legacy configs train, weights end up binary/ternary, the schedule follows the engine."""

import copy

import pytest
import torch

from conftest import legacy_config_paths, read_json, tiny_bert
from xtc_ds import build_student, initialize, redundancy_clean
from xtc_ds.runtime import CHECKPOINT_KEY
from xtc_ds.state import compression_state

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow


def _cpu_ready(ds_config: dict) -> dict:
    """The legacy fp16 config needs a GPU; on the CPU accelerator the DeepSpeed part runs in fp32.

    Only the DeepSpeed sections change; ``compression_training`` stays exactly as shipped.
    """
    ds_config = copy.deepcopy(ds_config)
    if ds_config.get("fp16", {}).get("enabled") and not deepspeed.get_accelerator().is_fp16_supported():
        ds_config["fp16"]["enabled"] = False
    return ds_config


def _batch(n=32, seq=16):
    return torch.randint(1, 96, (n, seq)), torch.randint(0, 2, (n,))


def _train(engine, steps, kd=False):
    ids, labels = _batch()
    losses = []
    for _ in range(steps):
        batch = {"input_ids": ids} if kd else {"input_ids": ids, "labels": labels}
        loss = engine.xtc.student_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _levels_per_group(model, report, config):
    """Largest number of distinct values in any quantization group of any targeted weight."""
    worst = {}
    for name, group in report.weight_quantized.items():
        module = model.get_submodule(name)
        weight = module.weight.detach()
        groups = config["weight_quantization"]["shared_parameters"].get("quantize_groups", 1)
        rows = (
            weight.reshape(weight.shape[0], -1)
            if isinstance(module, torch.nn.Embedding)
            else weight.reshape(groups, -1)
        )
        worst[group] = max(worst.get(group, 0), max(row.unique().numel() for row in rows))
    return worst


@pytest.mark.parametrize("path", legacy_config_paths(), ids=lambda p: p.name)
def test_legacy_config_trains_and_cleans_to_low_bit(path):
    ds_config = _cpu_ready(read_json(path))
    section = ds_config["compression_training"]
    teacher = tiny_bert(layers=12, hidden=64)
    reduction = section["layer_reduction"]["enabled"]
    model = build_student(teacher, ds_config) if reduction else teacher
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, _, _, _ = initialize(
        model=model, config=ds_config, optimizer=optimizer, teacher_model=teacher if reduction else None
    )
    assert engine.module is model
    losses = _train(engine, 3)
    # fp16 (where this CPU supports it) skips the steps whose gradients overflow; the schedule counts applied steps
    assert engine.global_steps == 3 and engine.xtc.scheduler.step_count == 3 - engine.skipped_steps
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    report = compression_state(model).report
    if section["weight_quantization"]["shared_parameters"]["enabled"]:
        redundancy_clean(engine, ds_config)
        expected = {
            g: (2 if v["params"]["target_bits"] == 1 else 3)
            for g, v in section["weight_quantization"]["different_groups"].items()
        }
        assert _levels_per_group(model, report, section) == expected
    else:
        assert not report.weight_quantized


def test_deepspeed_never_sees_the_section():
    """DeepSpeed >= 0.19 rejects the section; older DeepSpeed must not run its own compression on it."""
    config = read_json(legacy_config_paths()[0])
    model = tiny_bert(layers=12, hidden=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if hasattr(deepspeed.runtime.config, "_REMOVED_TOP_LEVEL_CONFIG_KEYS"):
        with pytest.raises(Exception, match="compression"):
            deepspeed.initialize(model=tiny_bert(), config=config, optimizer=optimizer)
    engine, *_ = initialize(model=model, config=config, optimizer=optimizer)
    legacy = getattr(engine._config, "compression_config", None)
    if legacy is not None:  # DeepSpeed <= 0.18 parsed the (now absent) section into its own config
        assert not legacy["weight_quantization"]["shared_parameters"]["enabled"]
        assert not legacy["activation_quantization"]["shared_parameters"]["enabled"]
    assert compression_state(model).report.weight_quantized


def _xtc_config(**overrides):
    config = {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 32,
        "gradient_accumulation_steps": 1,
        "compression_training": {
            "weight_quantization": {
                "shared_parameters": {"enabled": True, "schedule_offset": 2, "quantize_weight_in_forward": True},
                "different_groups": {
                    "wq1": {
                        "params": {"start_bits": 8, "target_bits": 1, "quantization_period": 1},
                        "modules": ["attention.self", "intermediate", "output.dense"],
                    }
                },
            },
            "activation_quantization": {
                "shared_parameters": {"enabled": True, "schedule_offset": 0, "range_calibration": "static"},
                "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["intermediate"]}},
            },
        },
    }
    config.update(overrides)
    return config


def test_gradient_accumulation_steps_schedule_only_on_boundaries():
    config = _xtc_config(train_batch_size=32, train_micro_batch_size_per_gpu=16, gradient_accumulation_steps=2)
    model = tiny_bert()
    engine, *_ = initialize(model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    ids, labels = _batch(16)
    for micro in range(6):
        engine.backward(engine(input_ids=ids, labels=labels).loss)
        engine.step()
        assert engine.xtc.scheduler.step_count == (micro + 1) // 2 == engine.global_steps


def test_checkpoint_carries_schedule_and_static_ranges(tmp_path):
    model = tiny_bert()
    engine, *_ = initialize(
        model=model, config=_xtc_config(), optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3)
    )
    _train(engine, 4)
    quantizer = model.bert.encoder.layer[0].intermediate.dense.weight_quantizer
    assert quantizer.enabled and quantizer.bits == 6  # offset 2, period 1: 8 bits at step 2, 7 at 3, 6 at 4
    engine.save_checkpoint(str(tmp_path), tag="step4")

    fresh = tiny_bert()
    engine2, *_ = initialize(
        model=fresh, config=_xtc_config(), optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    )
    fresh_q = fresh.bert.encoder.layer[0].intermediate.dense.weight_quantizer
    assert not fresh_q.enabled
    load_path, client_state = engine2.load_checkpoint(str(tmp_path), tag="step4")
    assert load_path is not None and CHECKPOINT_KEY not in client_state
    assert engine2.xtc.scheduler.step_count == 4 and fresh_q.enabled and fresh_q.bits == quantizer.bits
    act = fresh.bert.encoder.layer[0].intermediate.dense.act_quantizer
    assert torch.equal(act.x_max, model.bert.encoder.layer[0].intermediate.dense.act_quantizer.x_max)
    ids, _ = _batch(4)
    model.eval(), fresh.eval()
    assert torch.equal(engine(input_ids=ids).logits, engine2(input_ids=ids).logits)


@pytest.mark.parametrize("stage, bf16", [(0, False), (2, False), (2, True)])
def test_kd_with_layer_reduction_under_zero(stage, bf16):
    config = _xtc_config(zero_optimization={"stage": stage}, bf16={"enabled": bf16})
    config["compression_training"]["weight_quantization"]["shared_parameters"]["schedule_offset"] = 0
    config["compression_training"]["layer_reduction"] = {
        "enabled": True,
        "keep_number_layer": 2,
        "module_name_prefix": "bert.encoder.layer",
        "teacher_layer": [1, 3],
        "other_module_name": ["bert.embeddings", "bert.pooler", "classifier"],
    }
    config["compression_training"]["knowledge_distillation"] = {"enabled": True}
    teacher = tiny_bert(layers=4)
    student = build_student(teacher, config)
    engine, *_ = initialize(
        model=student, config=config, teacher_model=teacher, optimizer=torch.optim.AdamW(student.parameters(), lr=2e-3)
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    losses = _train(engine, 12, kd=True)
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in teacher.parameters())
    dense = student.bert.encoder.layer[0].intermediate.dense
    assert dense.quantized_weight().dtype == (torch.bfloat16 if bf16 else torch.float32)


def test_zero3_quantizer_sees_gathered_weight_and_clean_gathers():
    config = _xtc_config(zero_optimization={"stage": 3})
    config["compression_training"]["weight_quantization"]["shared_parameters"]["schedule_offset"] = 0
    model = tiny_bert()
    engine, *_ = initialize(model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    dense = model.bert.encoder.layer[0].intermediate.dense
    assert hasattr(dense.weight, "ds_id") and dense.weight.numel() == 0  # partitioned: no local full tensor
    seen = []
    dense.weight_quantizer.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    losses = _train(engine, 3)
    assert seen and set(seen) == {(64, 32)} and losses[-1] < losses[0]
    redundancy_clean(engine, config)
    with deepspeed.zero.GatheredParameters([dense.weight]):
        assert dense.weight.shape == (64, 32) and dense.weight.unique().numel() == 2


def test_initialize_takes_args_deepspeed_config_like_deepspeed(tmp_path):
    import argparse
    import json

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(_xtc_config()))
    parser = deepspeed.add_config_arguments(argparse.ArgumentParser())
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args(["--deepspeed", "--deepspeed_config", str(path)])
    model = tiny_bert()
    engine, optimizer, _, _ = initialize(args=args, model=model, optimizer=torch.optim.AdamW(model.parameters()))
    assert args.deepspeed_config == str(path)  # the caller's namespace is left alone
    assert engine.train_micro_batch_size_per_gpu() == 32 and optimizer is not None
    assert engine.xtc.config.weight_quantization.enabled
    with pytest.raises(ValueError, match="config twice"):
        initialize(args=args, model=tiny_bert(), config=str(path))


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_export_from_engine_and_from_its_checkpoint_agree(tmp_path, stage):
    from safetensors.torch import load_file

    from xtc_ds import export_packed, load_packed

    config = _xtc_config(zero_optimization={"stage": stage})
    section = config["compression_training"]
    section["weight_quantization"]["shared_parameters"]["schedule_offset"] = 0
    # The export writes the target bits: start there, so the engine compared below already runs them (8 -> 1 with
    # period 1 is at 6 bits after 3 steps).
    section["weight_quantization"]["different_groups"]["wq1"]["params"]["start_bits"] = 1
    section["activation_quantization"]["shared_parameters"]["range_calibration"] = "dynamic"
    model = tiny_bert()
    engine, *_ = initialize(model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    _train(engine, 3)
    live = export_packed(engine, config, tmp_path / "live")
    engine.save_checkpoint(str(tmp_path / "ckpt"))
    from_checkpoint = export_packed(tiny_bert(), config, tmp_path / "from_ckpt", checkpoint=tmp_path / "ckpt")
    first, second = (load_file(str(folder / "model.safetensors")) for folder in (live, from_checkpoint))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, msg=name)
    ids, _ = _batch(4)
    engine.eval()
    with torch.no_grad():  # the export computes what the trained engine computes (packed kernel tolerance)
        expected = engine(input_ids=ids).logits.float()
        got = load_packed(live)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
