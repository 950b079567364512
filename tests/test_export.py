"""export_packed -> load_packed: packed logits equal the QAT model's; files are small; bad files fail by name."""

import json

import pytest
import torch

from conftest import read_json, tiny_bert, tiny_model
from xtc_ds import (
    CompressionScheduler,
    ConfigError,
    PackedFormatError,
    export_packed,
    init_compression,
    load_packed,
    redundancy_clean,
)
from xtc_ds.export import packed_specs
from xtc_ds.nn import XtcPackedEmbedding, XtcPackedLinear

ROOT_CONFIGS = "ds_configs"


def _config(name="ds_xtc_1bit.json", **weight_shared):
    from pathlib import Path

    config = read_json(Path(__file__).resolve().parents[1] / ROOT_CONFIGS / name)
    config["compression_training"]["weight_quantization"]["shared_parameters"].update(weight_shared)
    return config


def _compressed(config, model=None):
    model = model or tiny_bert(eager=False)
    init_compression(model, config)
    CompressionScheduler(model).step()
    return model.eval()


def _load(folder):
    """The packed model with the attention implementation of the tiny models (transformers versions differ)."""
    return load_packed(folder, attn_implementation=tiny_bert(eager=False).config._attn_implementation)


def _inputs():
    ids = torch.randint(1, 96, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    "name, shared",
    [
        ("ds_xtc_1bit.json", {}),
        ("ds_xtc_2bit.json", {}),
        ("ds_xtc_1bit.json", {"quantize_groups": 4}),
        ("ds_xtc_2bit.json", {"quantize_groups": 64}),
    ],
)
def test_packed_logits_equal_qat_logits_on_the_reference_path(tmp_path, reference_kernels, name, shared):
    config = _config(name, **shared)
    model = _compressed(config)
    inputs = _inputs()
    out = export_packed(model, config, tmp_path / "packed")
    loaded = _load(out)
    assert isinstance(loaded.bert.encoder.layer[0].intermediate.dense, XtcPackedLinear)
    assert isinstance(loaded.bert.embeddings.word_embeddings, XtcPackedEmbedding)
    assert not loaded.training
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))


def test_uniform_bits_symmetric_and_asymmetric(tmp_path, reference_kernels):
    for bits, kind in ((4, "symmetric"), (8, "asymmetric"), (3, "asymmetric")):
        config = _config(quantization_type=kind)
        group = config["compression_training"]["weight_quantization"]["different_groups"]["wq1"]["params"]
        group.update(start_bits=bits, target_bits=bits)
        model = _compressed(config)
        loaded = _load(export_packed(model, config, tmp_path / f"packed{bits}"))
        inputs = _inputs()
        assert torch.equal(_logits(loaded, inputs), _logits(model, inputs)), (bits, kind)


def test_export_uses_the_models_config_and_refuses_a_different_one(tmp_path, reference_kernels):
    config = _config()
    model = _compressed(config)
    two_bits = _config()
    two_bits["compression_training"]["weight_quantization"]["different_groups"]["wq1"]["params"].update(
        start_bits=2, target_bits=2
    )
    with pytest.raises(ConfigError, match=r"wq1\.params\.target_bits: model 1, config 2"):
        export_packed(model, two_bits, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    folder = export_packed(model, None, tmp_path / "recorded")
    block = read_json(folder / "config.json")["quantization_config"]
    assert {spec["bits"] for spec in block["modules"].values() if spec.get("bits")} == {1}
    inputs = _inputs()
    assert torch.equal(_logits(_load(folder), inputs), _logits(model, inputs))
    with pytest.raises(ConfigError, match="carries no compression state"):
        export_packed(tiny_bert(eager=False), None, tmp_path / "plain")


def test_native_kernel_logits_within_tolerance(tmp_path, cpu_ops):
    config = _config()
    model = _compressed(config)
    loaded = _load(export_packed(model, config, tmp_path / "packed"))
    kernel_modules = [m for m in loaded.modules() if isinstance(m, XtcPackedLinear) and m.uses_packed_linear()]
    assert kernel_modules, "no module of this config runs the packed linear kernel: the test would compare nothing"
    inputs = _inputs()
    expected = _logits(model, inputs)
    torch.testing.assert_close(_logits(loaded, inputs), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_cleaned_model_and_folder_export_the_same_codes(tmp_path, reference_kernels):
    config = _config()
    model = _compressed(config)
    first = export_packed(model, config, tmp_path / "live")
    redundancy_clean(model, config)
    second = export_packed(model, config, tmp_path / "cleaned")
    model.save_pretrained(tmp_path / "hf")
    third = export_packed(tmp_path / "hf", config, tmp_path / "from_folder")
    from safetensors.torch import load_file

    tensors = [load_file(str(folder / "model.safetensors")) for folder in (first, second, third)]
    codes = [name for name in tensors[0] if name.endswith("packed_weight")]
    assert codes and all(torch.equal(t[name], tensors[0][name]) for t in tensors[1:] for name in codes)
    inputs = _inputs()
    assert torch.equal(_logits(_load(third), inputs), _logits(model, inputs))


def test_file_is_packed_and_config_records_the_format(tmp_path):
    config = _config()
    model = _compressed(config)
    out = export_packed(model, config, tmp_path / "packed", dtype=torch.float16)
    saved = json.loads((out / "config.json").read_text())
    block = saved["quantization_config"]
    assert block["quant_method"] == "xtc" and block["format_version"] == 2 and block["dtype"] == "float16"
    spec = block["modules"]["bert.encoder.layer.0.intermediate.dense"]
    assert (spec["bits"], spec["act_bits"], spec["out_features"], spec["in_features"]) == (1, 8, 64, 32)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    packed = tensors["bert.encoder.layer.0.intermediate.dense.packed_weight"]
    assert packed.dtype == torch.uint8 and packed.shape == (64, 4)  # 32 inputs -> 4 bytes per row
    assert tensors["bert.embeddings.word_embeddings.weight_scale"].shape == (96,)  # one scale per token
    assert tensors["classifier.weight"].dtype == torch.float16
    assert "bert.encoder.layer.0.intermediate.dense.weight" not in tensors
    loaded = _load(out)
    assert torch.equal(
        loaded.bert.encoder.layer[0].intermediate.dense.packed_weight,
        packed,
    )


def test_gpt2_conv1d_roundtrip(tmp_path, reference_kernels):
    config = _config()
    section = config["compression_training"]
    section["weight_quantization"]["different_groups"]["wq1"]["modules"] = ["c_attn", "c_fc", "wte"]
    section["activation_quantization"]["different_groups"]["aq1"]["modules"] = ["c_attn", "c_fc", "c_proj"]
    model = _compressed(config, tiny_model("gpt2"))
    specs = packed_specs(model, config)
    assert specs["transformer.h.0.attn.c_attn"].kind == "conv1d" and specs["transformer.h.0.mlp.c_proj"].bits is None
    loaded = _load(export_packed(model, config, tmp_path / "packed"))
    ids = {"input_ids": torch.randint(1, 96, (2, 10))}
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def _resigned(folder, tensors):
    """Write ``tensors`` with checksums that match them: a consistent file whose structure is wrong."""
    from safetensors.torch import save_file

    from xtc_ds.export.format import config_sha256, tensor_sha256

    save_file(tensors, str(folder / "model.safetensors"))
    saved = json.loads((folder / "config.json").read_text())
    block = saved["quantization_config"]
    block["tensor_sha256"] = {name: tensor_sha256(t) for name, t in tensors.items()}
    block["config_sha256"] = config_sha256(saved)
    (folder / "config.json").write_text(json.dumps(saved))


def test_bad_files_fail_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file

    config = _config()
    out = export_packed(_compressed(config), config, tmp_path / "packed")
    weights = out / "model.safetensors"
    tensors = load_file(str(weights))
    name = "bert.encoder.layer.1.output.dense.packed_weight"

    _resigned(out, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(PackedFormatError, match=f"'{name}' is missing"):
        _load(out)
    _resigned(out, {**tensors, name: tensors[name][:, :-1].contiguous()})
    with pytest.raises(PackedFormatError, match=f"'{name}' has shape"):
        _load(out)
    _resigned(out, {**tensors, name: tensors[name].float()})
    with pytest.raises(PackedFormatError, match=f"'{name}' is torch.float32, expected torch.uint8"):
        _load(out)
    _resigned(out, {k: v for k, v in tensors.items() if k != "classifier.bias"})
    with pytest.raises(PackedFormatError, match="'classifier.bias' is missing"):
        _load(out)
    _resigned(out, {**tensors, "extra.weight": torch.zeros(2)})
    with pytest.raises(PackedFormatError, match="unexpected tensor 'extra.weight'"):
        _load(out)
    _resigned(out, tensors)
    _load(out)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PackedFormatError, match="model.safetensors: tensor data ends at byte"):
        _load(out)
    saved = json.loads((out / "config.json").read_text())
    saved["quantization_config"]["format_version"] = 99
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(PackedFormatError, match="format_version 99"):
        _load(out)


def test_export_leaves_the_live_model_unchanged(tmp_path):
    config = _config()
    model = _compressed(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_packed(model, config, tmp_path / "packed")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.bert.encoder.layer[0].intermediate.dense.weight_quantizer is not None


def test_size_report_counts_packed_groups(tmp_path, capsys):
    from xtc_ds import size

    config = _config()
    out = export_packed(_compressed(config), config, tmp_path / "packed")
    report = size.size_report(out)
    assert set(report.groups) == {"wq1", "other"}
    stored, full = report.groups["wq1"]
    assert 20 < full / stored < 32  # 1-bit codes plus float32 scales (one per token for the 96-row embedding)
    assert report.file_bytes == (out / "model.safetensors").stat().st_size
    assert report.fp32_bytes > report.file_bytes
    size.main([str(out)])
    assert "quantized tensors only" in capsys.readouterr().out


def test_from_qat_packs_single_modules_in_memory(reference_kernels):
    from xtc_ds.nn import XtcPackedEmbedding, XtcPackedLinear

    config = _config()
    model = _compressed(config)
    specs = packed_specs(model, config)
    name = "bert.encoder.layer.0.intermediate.dense"
    qat, x = model.get_submodule(name), torch.randn(3, 5, 32)
    with torch.no_grad():
        assert torch.equal(XtcPackedLinear.from_qat(qat, specs[name])(x), qat(x))
    table = model.bert.embeddings.word_embeddings
    ids = torch.randint(0, 96, (2, 7))
    packed = XtcPackedEmbedding.from_qat(table, specs["bert.embeddings.word_embeddings"])
    with torch.no_grad():
        assert torch.equal(packed(ids), table(ids))
