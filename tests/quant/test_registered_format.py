"""A weight format added in this file alone (the library is not edited): configured, trained, packed and loaded."""

from pathlib import Path

import pytest
import torch

from conftest import read_json, tiny_bert
from xtc_ds import CompressionScheduler, ConfigError, export_packed, init_compression, load_packed
from xtc_ds.nn import XtcPackedEmbedding, XtcPackedLinear
from xtc_ds.quant.formats import WeightFormat, register_weight_format
from xtc_ds.quant.grids import Grid


class _ThreeLevels(WeightFormat):
    """Each group's weights on three levels, ``min``, ``max`` and the middle: codes 0..2 with a zero point."""

    def grid(self, rows: torch.Tensor, stochastic: bool = False) -> Grid:
        low, high = torch.aminmax(rows, dim=1, keepdim=True)
        low, high = low.clamp(max=0.0), high.clamp(min=0.0)
        scale = ((high - low) / 2).clamp_min(torch.finfo(torch.float32).tiny)
        zero_point = torch.round(-low / scale)
        return Grid(torch.round(rows / scale).add_(zero_point).clamp_(0, 2), scale, zero_point)


THREE_LEVELS = register_weight_format(_ThreeLevels("three_levels", bits=2, storage_bits=2, level_offset=None))


def _config(**params):
    config = read_json(Path(__file__).resolve().parents[2] / "ds_configs" / "ds_xtc_1bit.json")
    group = config["compression_training"]["weight_quantization"]["different_groups"]["wq1"]["params"]
    group.update({"start_bits": 2, "target_bits": 2, "format": "three_levels", **params})
    return config


def test_a_registered_format_trains_packs_and_loads(tmp_path, reference_kernels):
    torch.manual_seed(0)
    config = _config()
    model = tiny_bert(eager=False)
    init_compression(model, config)
    scheduler = CompressionScheduler(model)
    scheduler.step()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(1, 96, (4, 10))
    dense = model.bert.encoder.layer[0].intermediate.dense
    before = dense.weight.detach().clone()
    for _ in range(3):  # QAT: the straight-through gradient reaches the float weights
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, torch.tensor([0, 1, 0, 1]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert not torch.equal(dense.weight, before)
    quantized = dense.weight_quantizer(dense.weight.detach())
    assert quantized.unique().numel() == 3  # one group per matrix (quantize_groups 1): three levels

    model.eval()
    folder = export_packed(model, config, tmp_path / "packed")
    modules = read_json(folder / "config.json")["quantization_config"]["modules"]
    assert {spec.get("weight_format") for spec in modules.values()} == {"three_levels"}
    loaded = load_packed(folder, attn_implementation=model.config._attn_implementation)
    packed = loaded.bert.encoder.layer[0].intermediate.dense
    assert isinstance(packed, XtcPackedLinear) and not packed.uses_packed_linear()  # no kernel: the reference path
    assert isinstance(loaded.bert.embeddings.word_embeddings, XtcPackedEmbedding)
    assert packed.packed_weight.shape == (dense.out_features, dense.in_features * 2 // 8)  # 2-bit codes
    assert packed.weight_zero_point is not None
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_an_unregistered_format_or_a_bit_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match=r"wq1\.params\.format: weight format 'nine_levels' is not registered"):
        init_compression(tiny_bert(), _config(format="nine_levels"))
    with pytest.raises(ConfigError, match=r"wq1\.params\.start_bits: 4 .*no bit schedule"):
        init_compression(tiny_bert(), _config(start_bits=4))
    with pytest.raises(ValueError, match="built in"):
        register_weight_format(_ThreeLevels("ternary", bits=2, storage_bits=2, level_offset=None))
