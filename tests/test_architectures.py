"""One config for every BERT family: module roles ("@attention", "@ffn", ...) and layer reduction without
module_name_prefix/other_module_name, checked on tiny random-init RoBERTa, XLM-R, ELECTRA, DistilBERT and
DeBERTa-v2 through build_student, a few KD steps and an exact packed round trip."""

import copy
import re

import pytest
import torch

from models import tiny_bert, tiny_model
from xtc_ds import (
    ConfigError,
    build_student,
    distillation_loss,
    export_packed,
    init_compression,
    load_packed,
    redundancy_clean,
)
from xtc_ds.architectures import layers_path, modules_outside, resolve_patterns
from xtc_ds.config import load_compression_config
from xtc_ds.state import compression_state

FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2"]
PARTS_PER_LAYER = {"distilbert": 6, "deberta-v2": 8}  # DeBERTa-v2 also projects relative positions (pos_*_proj)


def _role_config(**reduction):
    return {
        "compression_training": {
            "layer_reduction": {"enabled": True, "teacher_layer": [1, 3], **reduction},
            "weight_quantization": {
                "shared_parameters": {"enabled": True, "quantize_weight_in_forward": True, "quantize_groups": 1},
                "different_groups": {
                    "wq1": {"params": {"start_bits": 1, "target_bits": 1}, "modules": ["@attention", "@ffn"]},
                    "wq2": {"params": {"start_bits": 2, "target_bits": 2}, "modules": ["@word_embeddings"]},
                },
            },
            "activation_quantization": {
                "shared_parameters": {"enabled": True, "range_calibration": "dynamic"},
                "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["@layers"]}},
            },
            "knowledge_distillation": {"enabled": True, "hidden_weight": 1.0, "attention_weight": 1.0},
        }
    }


def _without_reduction():
    config = _role_config()
    config["compression_training"]["layer_reduction"]["enabled"] = False
    return config


def _tensors(module):
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _same(a, b):
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_roles_reduction_kd_and_packed_roundtrip(arch, tmp_path, reference_kernels, caplog):
    torch.manual_seed(0)
    config = _role_config()
    teacher = tiny_model(arch, layers=4, eager=True).eval()
    student = build_student(teacher, config)
    prefix = layers_path(teacher, "module_name_prefix")
    assert len(student.get_submodule(prefix)) == 2
    assert _same(student.get_submodule(prefix)[0], teacher.get_submodule(prefix)[1])
    assert _same(student.get_submodule(prefix)[1], teacher.get_submodule(prefix)[3])
    for name in modules_outside(teacher, prefix):
        assert _same(student.get_submodule(name), teacher.get_submodule(name)), name
    assert not any("random initialization" in r.getMessage() for r in caplog.records)

    init_compression(student, config)
    report = compression_state(student).report
    word = [n for n, g in report.weight_quantized.items() if g == "wq2"]
    assert len(word) == 1 and word[0].endswith("embeddings.word_embeddings")
    per_layer = PARTS_PER_LAYER.get(arch, 6)
    assert sum(1 for g in report.weight_quantized.values() if g == "wq1") == 2 * per_layer
    assert len(report.activation_quantized) == 2 * per_layer

    ids, mask = torch.randint(1, 96, (4, 12)), torch.ones(4, 12, dtype=torch.long)
    mask[0, 8:] = 0
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    before = copy.deepcopy(student.state_dict())
    student.train()
    for _ in range(3):
        with torch.no_grad():
            t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        loss = distillation_loss(s_out, t_out, config)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())

    student.eval()
    redundancy_clean(student, config)
    folder = export_packed(student, None, tmp_path / "packed")
    loaded = load_packed(folder, attn_implementation="eager")  # the attention the student ran with
    assert type(loaded) is type(student)
    assert torch.equal(_logits(loaded, ids, mask), _logits(student, ids, mask)), arch


def test_roles_select_what_the_legacy_bert_regexes_select():
    model = tiny_bert(layers=2)
    legacy = ["attention.self", "intermediate", "output.dense"]
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    def selected(patterns):
        regexes = [re.compile(p) for p in resolve_patterns(model, tuple(patterns), "modules")]
        return {n for n in names if any(r.search(n) for r in regexes)}

    assert selected(["@layers"]) == selected(legacy)
    assert selected(["@attention.qkv"]) == selected(["attention.self"])
    assert selected(["@ffn.in"]) == selected(["intermediate"])
    assert selected(["@attention.output", "@ffn.out"]) == selected(["output.dense"])
    assert selected(["@ffn", "@attention"]) == selected(["@layers"])
    bare = tiny_bert(layers=2).bert  # a BertModel without the classification wrapper
    assert resolve_patterns(bare, ("@word_embeddings",), "m") == [r"^embeddings\.word_embeddings$"]


def test_unknown_role_and_role_on_an_unknown_architecture():
    config = _role_config()
    config["compression_training"]["weight_quantization"]["different_groups"]["wq1"]["modules"] = ["@fnn"]
    with pytest.raises(ConfigError, match=r"wq1\.modules\[0\]: '@fnn' \(unknown module role; roles: @attention"):
        load_compression_config(config)
    with pytest.raises(ConfigError, match=r"wq1\.modules\[0\]: @attention \(module roles are defined for .*'gpt2'"):
        init_compression(tiny_model("gpt2", layers=4), _without_reduction())


def test_derived_layer_lists_and_modules_outside_them():
    deberta = tiny_model("deberta-v2", layers=2)
    assert layers_path(deberta, "k") == "deberta.encoder.layer"
    assert modules_outside(deberta, "deberta.encoder.layer") == [
        "pooler",
        "classifier",
        "deberta.embeddings",
        "deberta.encoder.rel_embeddings",
    ]
    assert modules_outside(tiny_model("distilbert"), "distilbert.transformer.layer") == [
        "pre_classifier",
        "classifier",
        "distilbert.embeddings",
    ]
    gpt2 = tiny_model("gpt2", layers=4)  # not in the table: found as the only ModuleList of n_layer blocks
    assert layers_path(gpt2, "k") == "transformer.h"
    student = build_student(
        gpt2, {"compression_training": {"layer_reduction": {"enabled": True, "teacher_layer": [0, 2]}}}
    )
    assert _same(student.transformer.h[1], gpt2.transformer.h[2]) and _same(student.score, gpt2.score)


def test_legacy_prefix_and_module_lists_still_rule():
    teacher = tiny_bert(layers=4)
    config = {
        "compression_training": {
            "layer_reduction": {
                "enabled": True,
                "module_name_prefix": "bert.encoder.layer",
                "teacher_layer": [0, 2],
                "other_module_name": ["bert.embeddings"],
            }
        }
    }
    student = build_student(teacher, config)
    assert _same(student.bert.embeddings, teacher.bert.embeddings)
    assert not _same(student.classifier, teacher.classifier)  # not listed: stays freshly initialized
