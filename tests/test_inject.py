"""Injection: the right modules, the same Parameters and state_dict keys, clear errors, idempotence, revert."""

import pytest
import torch
from torch import nn

from conftest import tiny_bert, tiny_model
from xtc_ds import ConfigError, init_compression, inject, revert
from xtc_ds.nn import XtcQATConv1D, XtcQATEmbedding, XtcQATLinear
from xtc_ds.quant.reference import binarize, fake_quant_activation

PATTERNS = {
    "bert": (["attention.self", "intermediate", "output.dense", "word_embeddings"], 2 * 6 + 1),
    "roberta": (["attention.self", "intermediate", "output.dense", "word_embeddings"], 2 * 6 + 1),
    "distilbert": (["q_lin", "k_lin", "v_lin", "out_lin", "ffn", "word_embeddings"], 2 * 6 + 1),
    "gpt2": (["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wte"], 2 * 4 + 1),
}


def _config(modules, bits=1, groups=1, act=True):
    section = {
        "weight_quantization": {
            "shared_parameters": {"enabled": True, "quantize_groups": groups, "quantize_weight_in_forward": True},
            "different_groups": {"wq1": {"params": {"start_bits": bits, "target_bits": bits}, "modules": modules}},
        }
    }
    if act:
        section["activation_quantization"] = {
            "shared_parameters": {"enabled": True, "schedule_offset": 0},
            "different_groups": {
                "aq1": {"params": {"bits": 8}, "modules": [m for m in modules if "emb" not in m and m != "wte"]}
            },
        }
    return {"compression_training": section}


@pytest.mark.parametrize("arch", list(PATTERNS))
def test_inject_each_family_keeps_keys_and_parameters(arch):
    model = tiny_model(arch)
    keys = list(model.state_dict())
    params = {name: p for name, p in model.named_parameters()}
    modules, expected = PATTERNS[arch]
    report = inject(model, _config(modules))
    assert len(report.weight_quantized) == expected
    assert list(model.state_dict()) == keys
    for name, p in model.named_parameters():
        assert p is params[name]  # shared, not copied
    for name in report.weight_quantized:
        module = model.get_submodule(name)
        assert isinstance(module, (XtcQATLinear, XtcQATEmbedding) + ((XtcQATConv1D,) if XtcQATConv1D else ()))
        assert module.quantized_weight().unique().numel() <= (
            module.weight.shape[0] * 2 if isinstance(module, nn.Embedding) else 2
        )
    ids = torch.randint(1, 96, (2, 8))
    out = model(input_ids=ids).logits
    out.sum().backward()
    assert all(params[n].grad is not None for n in params if "word_embeddings.weight" in n or "wte" in n)


def test_qat_linear_forward_is_quantized_input_times_binary_weight():
    model = tiny_bert()
    inject(model, _config(["intermediate"]))
    dense = model.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(2, 5, 32)
    expected = nn.functional.linear(fake_quant_activation(x, 8), binarize(dense.weight), dense.bias)
    assert torch.allclose(dense(x), expected, atol=1e-6)


def test_conv1d_quantized_like_the_equivalent_linear():
    model = tiny_model("gpt2")
    inject(model, _config(["mlp.c_fc"], bits=4, groups="per_row", act=False))
    conv = model.transformer.h[0].mlp.c_fc
    linear = nn.Linear(conv.weight.shape[0], conv.weight.shape[1])
    linear.weight.data = conv.weight.data.t().clone()
    linear.bias.data = conv.bias.data.clone()
    inject(lin_model := nn.Sequential(linear), _config(["0"], bits=4, groups="per_row", act=False))
    x = torch.randn(3, conv.weight.shape[0])
    assert torch.allclose(conv(x), lin_model(x), atol=1e-5)


def test_embedding_quantized_per_token_matches_full_table():
    model = tiny_bert()
    inject(model, _config(["word_embeddings"], act=False))
    emb = model.bert.embeddings.word_embeddings
    ids = torch.tensor([[3, 7, 3, 50]])
    table = binarize(emb.weight, num_groups=emb.weight.shape[0])
    assert torch.equal(emb(ids), table[ids])


def test_zero_match_group_is_an_error_naming_the_group():
    model = tiny_bert()
    with pytest.raises(
        ConfigError, match=r"different_groups\.wq1\.modules: \['no_such_layer'\] matches no eligible module"
    ):
        inject(model, _config(["no_such_layer"], act=False))
    assert not any(isinstance(m, XtcQATLinear) for m in model.modules())  # nothing half-injected


def test_overlapping_groups_error_names_both():
    config = _config(["intermediate"], act=False)
    config["compression_training"]["weight_quantization"]["different_groups"]["wq2"] = {
        "params": {"start_bits": 2, "target_bits": 2},
        "modules": ["intermediate.dense"],
    }
    with pytest.raises(ConfigError, match="matched by both group 'wq1' and group 'wq2'"):
        inject(tiny_bert(), config)


def test_indivisible_groups_error_names_module():
    with pytest.raises(
        ConfigError,
        match=r"quantize_groups: 7 \(does not divide the 64x32 weight of 'bert.encoder.layer.0.intermediate.dense'",
    ):
        inject(tiny_bert(), _config(["intermediate"], groups=7, act=False))


def test_star_matches_all_eligible_modules():
    model = tiny_bert()
    report = inject(model, _config(["*"], act=False))
    eligible = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert sorted(report.weight_quantized) == sorted(eligible)


def test_reinjection_is_a_noop_and_other_config_is_rejected():
    model = tiny_bert()
    report = inject(model, _config(["intermediate"]))
    modules_before = dict(model.named_modules())
    assert inject(model, _config(["intermediate"])) is report
    assert dict(model.named_modules()) == modules_before
    with pytest.raises(ConfigError, match=r"revert\(\) first.*wq1\.modules: model \['intermediate'\]"):
        inject(model, _config(["output.dense"]))


def test_revert_restores_plain_modules_with_same_parameters():
    model = tiny_bert()
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    init_compression(model, _config(["intermediate", "word_embeddings"]))
    revert(model)
    dense = model.bert.encoder.layer[0].intermediate.dense
    assert type(dense) is nn.Linear and dense.weight is weight
    assert type(model.bert.embeddings.word_embeddings) is nn.Embedding
    x = torch.randn(1, 32)
    assert torch.equal(dense(x), nn.functional.linear(x, weight, dense.bias))
    inject(model, _config(["output.dense"]))  # a reverted model can be injected again


def test_mpu_is_accepted_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="xtc_ds"):
        init_compression(tiny_bert(), _config(["intermediate"]), mpu=object())
    assert any("tensor-parallel" in r.getMessage() for r in caplog.records)
