"""The schedule switches exactly at schedule_offset and steps bits down per period, with or without DeepSpeed."""

import logging

import pytest
import torch

from conftest import tiny_bert
from xtc_ds import CompressionScheduler, init_compression
from xtc_ds.config import WeightQuantParams
from xtc_ds.quant.reference import ternarize
from xtc_ds.schedule import scheduled_bits
from xtc_ds.state import UNSTEPPED_WARN_AFTER


def _section(wq_offset=0, aq_offset=0, start=1, target=1, period=0, mixed=None, static=False):
    shared = {"enabled": True, "schedule_offset": wq_offset, "quantize_weight_in_forward": True}
    if mixed is not None:
        shared["fp16_mixed_quantize"] = {"enabled": True, "quantize_change_ratio": mixed}
    return {
        "compression_training": {
            "weight_quantization": {
                "shared_parameters": shared,
                "different_groups": {
                    "wq1": {
                        "params": {"start_bits": start, "target_bits": target, "quantization_period": period},
                        "modules": ["attention.self", "intermediate", "output.dense"],
                    }
                },
            },
            "activation_quantization": {
                "shared_parameters": {
                    "enabled": True,
                    "schedule_offset": aq_offset,
                    "range_calibration": "static" if static else "dynamic",
                },
                "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["intermediate"]}},
            },
        }
    }


def test_scheduled_bits_legacy_doubling_period():
    params = WeightQuantParams(start_bits=8, target_bits=4, quantization_period=10)
    bits = [scheduled_bits(params, t)[0] for t in range(0, 100)]
    assert bits[0] == 8 and bits[9] == 8
    assert bits[10] == 7 and bits[19] == 7
    assert bits[20] == 6 and bits[39] == 6
    assert bits[40] == 5 and bits[79] == 5
    assert bits[80] == 4 and bits[99] == 4  # never below target
    assert scheduled_bits(params, 45) == (5, 40)


def test_scheduled_bits_period_zero_drops_every_step():
    params = WeightQuantParams(start_bits=4, target_bits=1, quantization_period=0)
    assert [scheduled_bits(params, t)[0] for t in range(5)] == [3, 2, 1, 1, 1]


def _quantizers(model):
    layer = model.bert.encoder.layer[0]
    return layer.intermediate.dense.weight_quantizer, layer.intermediate.dense.act_quantizer


def test_offsets_switch_exactly_at_step():
    model = init_compression(tiny_bert(), _section(wq_offset=3, aq_offset=5))
    wq, aq = _quantizers(model)
    scheduler = CompressionScheduler(model)
    seen = []
    for _ in range(7):
        seen.append((scheduler.step_count, wq.enabled, aq.enabled))
        scheduler.step()
    assert seen == [
        (0, False, False),
        (1, False, False),
        (2, False, False),
        (3, True, False),
        (4, True, False),
        (5, True, True),
        (6, True, True),
    ]


def test_offset_zero_is_active_before_any_step():
    model = init_compression(tiny_bert(), _section())
    wq, aq = _quantizers(model)
    assert wq.enabled and aq.enabled and wq.bits == 1
    dense = model.bert.encoder.layer[0].intermediate.dense
    assert dense.quantized_weight().unique().numel() == 2


def test_bits_step_down_per_period_in_forward_path():
    model = init_compression(tiny_bert(), _section(wq_offset=2, start=8, target=3, period=4))
    wq, _ = _quantizers(model)
    dense = model.bert.encoder.layer[0].intermediate.dense
    scheduler = CompressionScheduler(model)
    history = []
    for _ in range(2 + 20):
        history.append(wq.bits if wq.enabled else None)
        scheduler.step()
    # offset 2; drops at 4, 8, 16 steps after it
    assert history == [None, None] + [8] * 4 + [7] * 4 + [6] * 8 + [5] * 4
    assert dense.quantized_weight().unique().numel() <= 2**5 - 1


def test_fp16_mixed_ratio_decays_and_resets_on_bit_change():
    model = init_compression(tiny_bert(), _section(start=3, target=2, period=5, mixed=0.25))
    wq, _ = _quantizers(model)
    scheduler = CompressionScheduler(model)
    ratios = []
    for _ in range(8):
        ratios.append((wq.bits, wq.real_ratio))
        scheduler.step()
    assert ratios == [(3, 1.0), (3, 0.75), (3, 0.5), (3, 0.25), (3, 0.0), (2, 1.0), (2, 0.75), (2, 0.5)]
    dense = model.bert.encoder.layer[0].intermediate.dense
    assert (wq.bits, wq.real_ratio) == (2, 0.25)  # after the 8th step
    expected = 0.25 * dense.weight + 0.75 * ternarize(dense.weight, num_groups=1)
    assert torch.allclose(dense.quantized_weight(), expected)


def test_state_dict_round_trip_restores_switches_and_static_ranges():
    model = init_compression(tiny_bert(), _section(wq_offset=2, aq_offset=2, static=True))
    scheduler = CompressionScheduler(model)
    x = torch.randint(0, 96, (2, 8))
    for _ in range(3):
        model(input_ids=x)
        scheduler.step()
    model(input_ids=x)
    saved = scheduler.state_dict()
    assert saved["step"] == 3 and len(saved["activation_ranges"]) == 2

    fresh = init_compression(tiny_bert(), _section(wq_offset=2, aq_offset=2, static=True))
    restored = CompressionScheduler(fresh)
    wq, aq = _quantizers(fresh)
    assert not wq.enabled
    restored.load_state_dict(saved)
    assert restored.step_count == 3 and wq.enabled and aq.enabled
    assert torch.equal(aq.x_max, _quantizers(model)[1].x_max)


def test_static_range_updates_only_in_training():
    model = init_compression(tiny_bert(), _section(static=True))
    _, aq = _quantizers(model)
    x = torch.randint(0, 96, (2, 8))
    model.train()(input_ids=x)
    first = aq.x_max.clone()
    model.eval()(input_ids=torch.randint(0, 96, (2, 8)))
    assert torch.equal(aq.x_max, first)
    model.train()(input_ids=torch.randint(0, 96, (2, 8)))
    assert not torch.equal(aq.x_max, first)


def test_unstepped_training_warns_once(caplog):
    model = init_compression(tiny_bert(), _section(wq_offset=10)).train()
    x = torch.randint(0, 96, (2, 8))
    with caplog.at_level(logging.WARNING, logger="xtc_ds"):
        for _ in range(UNSTEPPED_WARN_AFTER + 5):
            model(input_ids=x)
    warnings = [r for r in caplog.records if "never stepped" in r.getMessage()]
    assert len(warnings) == 1
    assert "weight quantization off" in warnings[0].getMessage()


def test_stepped_training_does_not_warn(caplog):
    model = init_compression(tiny_bert(), _section()).train()
    scheduler = CompressionScheduler(model)
    x = torch.randint(0, 96, (2, 8))
    with caplog.at_level(logging.WARNING, logger="xtc_ds"):
        for _ in range(UNSTEPPED_WARN_AFTER + 5):
            model(input_ids=x)
            scheduler.step()
    assert not [r for r in caplog.records if "never stepped" in r.getMessage()]


def test_scheduler_requires_injected_model():
    with pytest.raises(ValueError, match="init_compression"):
        CompressionScheduler(tiny_bert())
