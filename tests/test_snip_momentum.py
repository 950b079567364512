"""``sparse_pruning`` with ``snip_momentum``: block masks grown on a cubic schedule from momentum SNIP scores, the
legacy form without groups, resumable state, cleaning and packed exports."""

from __future__ import annotations

import json

import pytest
import torch

import xtc_ds
from configs import section
from models import tiny_bert
from xtc_ds.config import ConfigError
from xtc_ds.nn.snip_mask import MOMENTUM, SnipSchedule

IDS = torch.randint(0, 96, (3, 12), generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 0])


def _snip(offset=2, end=6, stride=2, dense_ratio=0.25, groups=None, **shared) -> dict:
    """A ``snip_momentum`` section; without ``groups`` in the legacy form (every Linear but the classifier)."""
    return {
        "shared_parameters": {
            "enabled": True,
            "method": "snip_momentum",
            "schedule_offset": offset,
            "schedule_offset_end": end,
            "schedule_offset_stride": stride,
            "block_pattern": "4x1",
            "dense_ratio": dense_ratio,
            "excluded_modules": ["classifier"],
            **shared,
        },
        "different_groups": groups or {},
    }


def _compressed(sparse: dict, recipe: str = "ds_xtc_1bit.json", quantize: bool = True):
    torch.manual_seed(0)
    model = tiny_bert(layers=2, hidden=32)
    sec = section(recipe, kd=False)
    if not quantize:
        sec = {}
    sec["sparse_pruning"] = sparse
    xtc_ds.init_compression(model, {"compression_training": sec})
    return model, xtc_ds.CompressionScheduler(model)


def _train(model, scheduler, steps: int, accumulate: int = 1) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        for _ in range(accumulate):
            model(input_ids=IDS, labels=LABELS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def _query(model, layer: int = 0):
    return model.bert.encoder.layer[layer].attention.self.query


def _blocks(keep: torch.Tensor) -> torch.Tensor:
    """The (rows/4, cols) block mask of a 4x1-block weight mask, checking every block is whole."""
    blocks = keep.reshape(keep.shape[0] // 4, 4, keep.shape[1])
    assert bool((blocks.all(dim=1) | ~blocks.any(dim=1)).all()), "a 4x1 block is partly pruned"
    return blocks[:, 0, :]


def test_schedule_prunes_at_offset_then_every_stride_on_a_cubic_curve_to_the_dense_ratio():
    schedule = SnipSchedule(offset=2, end=6, stride=2)
    ratios = [schedule.dense_ratio_at(step, 0.25) for step in range(9)]
    assert ratios[0] is ratios[1] is ratios[3] is ratios[5] is ratios[7] is ratios[8] is None
    assert ratios[2] == pytest.approx(1 - 0.75 * (1 - (2 / 3) ** 3))
    assert ratios[4] == pytest.approx(1 - 0.75 * (1 - (1 / 3) ** 3))
    assert ratios[6] == pytest.approx(0.25)
    assert SnipSchedule(5, 5, 1).dense_ratio_at(5, 0.4) == pytest.approx(0.4)  # one shot
    uneven = SnipSchedule(offset=2, end=7, stride=2)  # the stride stops short of the end: step 6 is the last
    assert uneven.last_step == 6 and uneven.dense_ratio_at(6, 0.25) == pytest.approx(0.25)


def test_masks_shrink_gradually_in_whole_blocks_and_never_regrow():
    model, scheduler = _compressed(_snip())
    query = _query(model)
    seen, previous = {}, torch.ones(8, 32, dtype=torch.bool)
    for step in range(1, 8):
        _train(model, scheduler, 1)
        blocks = _blocks(query.sparse_pruning.scores)
        assert not bool((blocks & ~previous).any()), f"a pruned block came back at step {step}"
        previous = blocks
        seen[step] = int(blocks.sum())
    assert seen[1] == 256 and seen[2] == 121 and seen[3] == 121  # ceil(0.472 * 256)
    assert seen[4] == 72 and seen[6] == seen[7] == 64  # ceil(0.278 * 256); exactly 25 % at the last step
    assert bool(query.sparse_pruning.scored)
    weight = query.quantized_weight().detach()
    assert torch.equal(weight != 0, query.sparse_pruning.scores)  # the masked 1-bit weight: -a, 0, +a
    assert "classifier" not in json.dumps(scheduler.report()["pruning"])


def test_scores_are_momentum_sums_of_weight_times_gradient_over_micro_batches():
    model, scheduler = _compressed(_snip(offset=5, end=5), quantize=False)
    query = _query(model)
    model.train()
    grads = []
    for _ in range(2):  # two micro-batches of one optimizer step
        model(input_ids=IDS, labels=LABELS).loss.backward()
        grads.append(query.weight.grad.clone())
    weight = query.weight.detach()
    expected = (weight * grads[0]).abs() + (weight * (grads[1] - grads[0])).abs()
    expected = expected.reshape(8, 4, 32).sum(dim=1)
    assert torch.allclose(query.sparse_pruning.pending, expected, rtol=1e-5, atol=1e-9)
    scheduler.step()
    assert torch.allclose(query.sparse_pruning.momentum, MOMENTUM * expected, rtol=1e-5, atol=1e-9)


def test_the_lowest_scoring_blocks_go():
    model, scheduler = _compressed(_snip(offset=1, end=1, dense_ratio=0.5))
    for module in model.modules():
        mask = getattr(module, "sparse_pruning", None)
        if mask is not None:
            mask.recording = False  # scores set by hand below
    mask = _query(model).sparse_pruning
    scores = torch.arange(256, dtype=torch.float32).reshape(8, 32)
    mask.momentum.copy_(scores)
    scheduler.step()
    assert torch.equal(_blocks(mask.scores), scores >= 128)


def test_groups_take_their_own_dense_ratio_and_excluded_modules_stay_dense():
    groups = {
        "ffn": {"params": {"dense_ratio": 0.5}, "modules": ["intermediate.dense"]},
        "attn": {"params": {"dense_ratio": 0.25}, "modules": ["attention"]},
    }
    model, scheduler = _compressed(_snip(offset=1, end=1, groups=groups, excluded_modules=["layer.1"]))
    _train(model, scheduler, 1)
    layer0, layer1 = model.bert.encoder.layer
    assert layer0.intermediate.dense.sparse_pruning.kept_units == 64 * 32 // 2
    assert layer0.attention.output.dense.sparse_pruning.kept_units == 32 * 32 // 4
    assert not hasattr(layer1.attention.self.query, "sparse_pruning")
    assert not hasattr(layer0.output.dense, "sparse_pruning")


def test_the_legacy_form_prunes_every_linear_its_block_tiles_and_warns_about_the_rest(caplog):
    sparse = _snip(offset=1, end=1)
    sparse["shared_parameters"]["excluded_modules"] = []
    model, scheduler = _compressed(sparse)
    assert "leaves ['classifier'] unpruned" in caplog.text
    assert hasattr(model.bert.pooler.dense, "sparse_pruning")
    assert not hasattr(model.classifier, "sparse_pruning")


def test_resumed_schedule_continues_exactly_like_an_uninterrupted_one():
    straight, straight_scheduler = _compressed(_snip())
    torch.manual_seed(5)  # dropout
    _train(straight, straight_scheduler, 6)
    first, first_scheduler = _compressed(_snip())
    torch.manual_seed(5)
    _train(first, first_scheduler, 3)
    saved_model, saved_schedule, rng = first.state_dict(), first_scheduler.state_dict(), torch.get_rng_state()
    resumed, resumed_scheduler = _compressed(_snip())
    resumed.load_state_dict(saved_model)
    resumed_scheduler.load_state_dict(saved_schedule)
    assert not bool(_query(resumed).sparse_pruning.scored)  # the last pruning step is still to come
    torch.set_rng_state(rng)
    _train(resumed, resumed_scheduler, 3)
    for name, tensor in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name].float(), tensor.float(), atol=1e-6), name


def test_cleaning_before_the_last_step_prunes_to_the_final_ratio_and_exports_compact(tmp_path, monkeypatch):
    model, scheduler = _compressed(_snip(offset=2, end=20))
    _train(model, scheduler, 3)
    assert _query(model).sparse_pruning.kept_units > 256
    model.eval()
    import xtc_ds.nn.snip_mask as snip_mask

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective in redundancy_clean (launch/train.py cleans on rank 0 alone)")

    monkeypatch.setattr(snip_mask.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(snip_mask.dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(snip_mask.dist, "all_reduce", no_collective)
    xtc_ds.redundancy_clean(model)
    monkeypatch.undo()
    weight = _query(model).weight.detach()
    assert float((weight != 0).float().mean()) == 0.25
    _blocks(weight != 0)
    cleaned = model(input_ids=IDS).logits.detach()
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert block["modules"]["bert.encoder.layer.0.attention.self.query"]["bits"] == 2  # -a, 0, +a: ternary
    assert "bert.encoder.layer.0.attention.self.query" in block["compact_sparse"]  # bitmap + signs: 1.25 bits
    assert torch.allclose(xtc_ds.load_packed(folder)(input_ids=IDS).logits, cleaned, atol=1e-5)
    pytest.importorskip("onnxruntime")
    from xtc_ds.onnx_export import OnnxClassifier, export_onnx

    onnx = OnnxClassifier(export_onnx(folder, tmp_path / "onnx", accuracy_level=0))
    assert torch.allclose(onnx(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits, cleaned, atol=1e-4)


def test_cleaned_model_computes_the_masked_logits_exactly():
    model, scheduler = _compressed(_snip(offset=1, end=3, stride=1), recipe="ds_xtc_2bit.json")
    _train(model, scheduler, 4)
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=IDS).logits
        xtc_ds.redundancy_clean(model)
        assert torch.equal(model(input_ids=IDS).logits, masked)


@pytest.mark.parametrize(
    "shared, groups, message",
    [
        ({"schedule_offset": 0}, None, "schedule_offset: 0 (must be >= 1 with snip_momentum"),
        (
            {"block_pattern": "3x1"},
            {"g": {"params": {"dense_ratio": 0.5}, "modules": ["intermediate.dense"]}},
            "block_pattern: '3x1' does not tile the 64x32 weight of 'bert.encoder.layer.0.intermediate.dense'",
        ),
        ({"block_pattern": "0x4"}, None, "block_pattern: '0x4' (must look like '4x1'"),
        ({"excluded_modules": ["("]}, None, "excluded_modules[0]: '(' is not a valid regex"),
        ({"excluded_modules": ["."]}, None, "no Linear module is left to prune"),
        ({"schedule_offset_end": 1}, None, "schedule_offset_end: 1 (must be >= schedule_offset"),
    ],
    ids=["offset-0", "untiled-group", "pattern", "regex", "all-excluded", "end-before-offset"],
)
def test_bad_snip_configs_name_the_key(shared, groups, message):
    with pytest.raises(ConfigError) as err:
        _compressed(_snip(groups=groups, **shared))
    assert message in str(err.value)
