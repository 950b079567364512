"""One-stage KD: zero hidden/attention terms and teacher-entropy SCE for identical models; growth otherwise."""

import pytest
import torch

from conftest import tiny_bert
from xtc_ds import ConfigError, DistillationLoss, build_student, distillation_loss


def _config(teacher_layer=None, **kd):
    section = {"knowledge_distillation": {"enabled": True, **kd}}
    if teacher_layer is not None:
        section["layer_reduction"] = {
            "enabled": True,
            "module_name_prefix": "bert.encoder.layer",
            "teacher_layer": teacher_layer,
            "other_module_name": ["bert.embeddings", "bert.pooler", "classifier"],
        }
    return {"compression_training": section}


def _outputs(model, ids):
    return model(input_ids=ids, output_hidden_states=True, output_attentions=True)


def test_identical_models_give_zero_layer_terms_and_teacher_entropy():
    teacher = tiny_bert(layers=2).eval()
    ids = torch.randint(0, 96, (4, 8))
    out = _outputs(teacher, ids)
    terms = DistillationLoss(_config()).terms(out, out)
    assert terms["hidden"].item() == 0.0 and terms["attention"].item() == 0.0
    p = torch.softmax(out.logits, -1)
    entropy = -(p * torch.log(p)).sum(-1).mean()
    assert terms["logits"].item() == pytest.approx(entropy.item(), rel=1e-6)
    total = distillation_loss(out, out, _config())
    assert total.item() == pytest.approx(entropy.item(), rel=1e-6)


def test_all_terms_grow_when_models_differ():
    teacher = tiny_bert(layers=2).eval()
    ids = torch.randint(0, 96, (4, 8))
    t_out = _outputs(teacher, ids)
    same = DistillationLoss(_config()).terms(t_out, t_out)
    other = tiny_bert(layers=2).eval()
    diff = DistillationLoss(_config()).terms(_outputs(other, ids), t_out)
    for name in ("logits", "hidden", "attention"):
        assert diff[name].item() > same[name].item() + 1e-6, name


def test_layer_map_from_teacher_layer_pairs_copied_layers():
    loss = DistillationLoss(_config([1, 3]))
    assert loss.attention_map == (1, 3) and loss.hidden_map == (0, 2, 4)
    # A student made of the teacher's first two layers computes exactly the teacher's first hidden states and
    # attentions, so with the derived map both layer terms are exactly zero.
    teacher = tiny_bert(layers=4).eval()
    student = build_student(teacher, _config([0, 1])).eval()
    ids = torch.randint(0, 96, (2, 8))
    terms = DistillationLoss(_config([0, 1])).terms(_outputs(student, ids), _outputs(teacher, ids))
    assert terms["hidden"].item() == 0.0 and terms["attention"].item() == 0.0
    shifted = DistillationLoss(_config([0, 1], hidden_layer_map=[0, 2, 3], attention_layer_map=[1, 2]))
    terms = shifted.terms(_outputs(student, ids), _outputs(teacher, ids))
    assert terms["hidden"].item() > 0 and terms["attention"].item() > 0


def test_temperature_scales_soft_cross_entropy():
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    loss = DistillationLoss(_config(temperature=2.0, hidden_weight=0, attention_weight=0))
    expected = -(torch.softmax(t / 2, -1) * torch.log_softmax(s / 2, -1)).sum(-1).mean() * 4
    assert loss({"logits": s}, {"logits": t}).item() == pytest.approx(expected.item(), rel=1e-6)


def test_regression_head_uses_mse():
    s, t = torch.randn(8, 1), torch.randn(8, 1)
    loss = DistillationLoss(_config(hidden_weight=0, attention_weight=0))
    assert loss({"logits": s}, {"logits": t}).item() == pytest.approx(torch.mean((s - t) ** 2).item(), rel=1e-6)


def test_weights_combine_terms():
    teacher, other = tiny_bert().eval(), tiny_bert().eval()
    ids = torch.randint(0, 96, (2, 8))
    s, t = _outputs(other, ids), _outputs(teacher, ids)
    terms = DistillationLoss(_config()).terms(s, t)
    weighted = DistillationLoss(_config(logits_weight=2.0, hidden_weight=0.5, attention_weight=3.0))(s, t)
    expected = 2.0 * terms["logits"] + 0.5 * terms["hidden"] + 3.0 * terms["attention"]
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


def test_missing_outputs_and_disabled_kd_are_clear_errors():
    teacher = tiny_bert().eval()
    plain = teacher(input_ids=torch.randint(0, 96, (2, 8)))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        distillation_loss(plain, plain, _config())
    with pytest.raises(ConfigError, match="knowledge_distillation.enabled: False"):
        DistillationLoss({"compression_training": {}})
    with pytest.raises(ConfigError, match="attention_layer_map: 7"):
        out = _outputs(teacher, torch.randint(0, 96, (2, 8)))
        DistillationLoss(_config(attention_layer_map=[0, 7]))(out, out)


def test_config_file_is_parsed_once_and_reread_when_changed(tmp_path):
    import json
    import os

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(_config(hidden_weight=0, attention_weight=0)))
    s, t = {"logits": torch.randn(4, 2)}, {"logits": torch.randn(4, 2)}
    first = distillation_loss(s, t, str(path))
    path.write_text(json.dumps(_config(logits_weight=3.0, hidden_weight=0, attention_weight=0)))
    os.utime(path, (os.path.getmtime(path) + 5,) * 2)
    assert distillation_loss(s, t, str(path)).item() == pytest.approx(3 * first.item(), rel=1e-6)
