"""build_student copies the chosen teacher layers exactly and validates indices against both models."""

import pytest
import torch

from conftest import tiny_bert, tiny_model
from xtc_ds import ConfigError, build_student, init_compression
from xtc_ds.state import compression_state


def _reduction(teacher_layer, prefix="bert.encoder.layer", other=("bert.embeddings", "bert.pooler", "classifier")):
    return {
        "compression_training": {
            "layer_reduction": {
                "enabled": True,
                "keep_number_layer": len(teacher_layer),
                "module_name_prefix": prefix,
                "teacher_layer": list(teacher_layer),
                "other_module_name": list(other),
            }
        }
    }


def _assert_same(student_module, teacher_module):
    s = dict(student_module.named_parameters()) | dict(student_module.named_buffers())
    t = dict(teacher_module.named_parameters()) | dict(teacher_module.named_buffers())
    assert s.keys() == t.keys()
    for name in s:
        assert torch.equal(s[name], t[name]), name
        assert s[name].data_ptr() != t[name].data_ptr()  # copied, not shared


def test_student_layers_are_exact_copies():
    teacher = tiny_bert(layers=6)
    student = build_student(teacher, _reduction([1, 3, 5]))
    assert student.config.num_hidden_layers == 3 and len(student.bert.encoder.layer) == 3
    assert teacher.config.num_hidden_layers == 6
    for i, t in enumerate([1, 3, 5]):
        _assert_same(student.bert.encoder.layer[i], teacher.bert.encoder.layer[t])
    for name in ("bert.embeddings", "bert.pooler", "classifier"):
        _assert_same(student.get_submodule(name), teacher.get_submodule(name))


def test_student_of_student_equals_the_teacher_reduced_to_the_kept_layers():
    teacher = tiny_bert(layers=6).eval()
    student = build_student(teacher, _reduction([1, 3, 5])).eval()
    grandchild = build_student(student, _reduction([0, 2])).eval()  # the student's layers 0, 2: teacher's 1, 5
    direct = build_student(teacher, _reduction([1, 5])).eval()
    ids = torch.randint(0, 96, (2, 8))
    assert grandchild.config.num_hidden_layers == 2
    for mine, theirs in ((0, 1), (1, 5)):
        weight = grandchild.bert.encoder.layer[mine].output.dense.weight
        assert torch.equal(weight, teacher.bert.encoder.layer[theirs].output.dense.weight), (mine, theirs)
    assert torch.equal(grandchild(input_ids=ids).logits, direct(input_ids=ids).logits)
    assert not torch.allclose(grandchild(input_ids=ids).logits, student(input_ids=ids).logits)


def test_unlisted_modules_are_reported(caplog):
    with caplog.at_level("WARNING", logger="xtc_ds"):
        build_student(tiny_bert(layers=4), _reduction([0, 2], other=("bert.embeddings",)))
    assert any("random initialization" in r.getMessage() and "classifier" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "arch, prefix, other",
    [
        ("distilbert", "distilbert.transformer.layer", ("distilbert.embeddings", "pre_classifier", "classifier")),
        ("gpt2", "transformer.h", ("transformer.wte", "transformer.wpe", "transformer.ln_f", "score")),
        ("roberta", "roberta.encoder.layer", ("roberta.embeddings", "classifier")),
    ],
)
def test_other_families(arch, prefix, other):
    teacher = tiny_model(arch)
    student = build_student(teacher, _reduction([1], prefix=prefix, other=other))
    _assert_same(student.get_submodule(prefix)[0], teacher.get_submodule(prefix)[1])
    student(input_ids=torch.randint(1, 96, (2, 8)))


def test_teacher_index_out_of_range():
    with pytest.raises(ConfigError, match=r"teacher_layer\[1\]: 9 \(the teacher has 6 layers"):
        build_student(tiny_bert(layers=6), _reduction([1, 9]))


def test_bad_prefix_and_module_names():
    with pytest.raises(ConfigError, match="module_name_prefix: 'bert.encoder.layers'"):
        build_student(tiny_bert(), _reduction([0], prefix="bert.encoder.layers"))
    with pytest.raises(ConfigError, match=r"other_module_name\[0\]: 'bert.pooling'"):
        build_student(tiny_bert(), _reduction([0], other=("bert.pooling",)))


def test_init_compression_initializes_given_student_from_teacher():
    teacher = tiny_bert(layers=4)
    student = tiny_bert(layers=2)
    init_compression(student, _reduction([1, 3]), teacher_model=teacher)
    _assert_same(student.bert.encoder.layer[1], teacher.bert.encoder.layer[3])


def test_init_compression_student_depth_must_match():
    with pytest.raises(ConfigError, match="the student has 4 layers"):
        init_compression(tiny_bert(layers=4), _reduction([1, 3]))
    with pytest.raises(ConfigError, match="lists 2 layers but the student has 3"):
        init_compression(tiny_bert(layers=3), _reduction([1, 3]), teacher_model=tiny_bert(layers=4))


def test_without_layer_reduction_the_student_is_a_copy_of_the_teacher():
    config = _reduction([0])
    config["compression_training"]["layer_reduction"]["enabled"] = False
    teacher = tiny_bert(layers=3).eval()
    student = build_student(teacher, config)
    assert student is not teacher and not student.training
    assert len(student.bert.encoder.layer) == 3
    _assert_same(student, teacher)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(student.parameters(), teacher.parameters()))


def test_default_ds_xtc_config_fits_minilm_shape():
    from conftest import REPO_ROOT

    path = REPO_ROOT / "ds_configs" / "ds_xtc.json"
    teacher = tiny_bert(layers=6)  # MiniLM-L6 layout and module names
    student = build_student(teacher, path)
    init_compression(student, path)
    report = compression_state(student).report
    assert len(student.bert.encoder.layer) == 3
    assert len(report.weight_quantized) == 3 * 6 + 1 and len(report.activation_quantized) == 3 * 6
