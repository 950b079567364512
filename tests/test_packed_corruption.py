"""Damaged packed folders: every truncation, flipped byte, edited field or missing/extra tensor is a
PackedFormatError naming the file (and the tensor, for tensor data) at load time, or loads to identical outputs."""

import json
import random
import shutil

import pytest
import torch

from conftest import REPO_ROOT, read_json, tiny_bert
from xtc_ds import CompressionScheduler, PackedFormatError, export_packed, init_compression, load_packed
from xtc_ds.size import size_report

CASES_PER_KIND = 24


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export with weight and activation quantization, and its logits on a fixed batch."""
    torch.manual_seed(0)
    config = read_json(REPO_ROOT / "ds_configs" / "ds_xtc_2bit.json")
    model = tiny_bert(eager=False)
    init_compression(model, config)
    CompressionScheduler(model).step()
    folder = export_packed(model.eval(), config, tmp_path_factory.mktemp("export") / "packed")
    inputs = {"input_ids": torch.randint(1, 96, (2, 9))}
    return folder, inputs, _logits(folder, inputs)


def _logits(folder, inputs):
    attention = tiny_bert(eager=False).config._attn_implementation
    with torch.no_grad():
        return load_packed(folder, attn_implementation=attention)(**inputs).logits


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]


def _header_length(weights: bytes) -> int:
    return 8 + int.from_bytes(weights[:8], "little")


def _edited_fields():
    """Edits of config.json a user (or a bad tool) could make; each changes or breaks the model if accepted."""
    block = ("quantization_config",)
    spec = (*block, "modules", "bert.encoder.layer.0.intermediate.dense")
    return [
        ((*spec, "act_bits"), 4),
        ((*spec, "act_bits"), 3),
        ((*spec, "act_symmetric"), False),
        ((*spec, "bits"), 1),
        ((*spec, "bits"), "2"),
        ((*spec, "num_groups"), 7),
        ((*spec, "kind"), "conv1d"),
        ((*spec, "out_features"), True),
        ((*spec, "in_features"), None),
        ((*spec, "extra"), 1),
        ((*block, "layout"), "rows_msb_first"),
        ((*block, "dtype"), "int8"),
        ((*block, "format_version"), True),
        ((*block, "non_persistent_buffers"), "x"),
        ((*block, "modules"), []),
        ((*block, "tensor_sha256"), None),
        ((*block, "config_sha256"), "0" * 64),
        ((*block, "compression_training", "activation_quantization", "different_groups", "aq1", "params", "bits"), 4),
        ((*block, "compression_training", "weight_quantization", "shared_parameters", "quantize_groups"), 3),
        (("hidden_act",), "relu"),
        (("layer_norm_eps",), 1e-5),
        (("num_attention_heads",), 1),
        (("hidden_size",), 48),
        (("architectures",), ["pipeline"]),
        (block, None),
    ]


def _set(config, path, value):
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _damaged(exported, tmp_path):
    """Yield (what, folder) for every damaged copy of the export."""
    folder, _, _ = exported
    rng = random.Random(0)
    weights = (folder / "model.safetensors").read_bytes()
    config_text = (folder / "config.json").read_text()
    header_end = _header_length(weights)

    def copy(name):
        target = tmp_path / name
        shutil.copytree(folder, target)
        return target

    for i, cut in enumerate(sorted(rng.sample(range(len(weights)), CASES_PER_KIND)) + [0, 4, 8, header_end]):
        target = copy(f"trunc{i}")
        (target / "model.safetensors").write_bytes(weights[:cut])
        yield f"truncated to {cut} bytes", target
    for i, offset in enumerate(rng.sample(range(header_end, len(weights)), CASES_PER_KIND)):
        target = copy(f"dataflip{i}")
        (target / "model.safetensors").write_bytes(_flip(weights, offset))
        yield f"data byte {offset} flipped", target
    for i, offset in enumerate(rng.sample(range(8, header_end), CASES_PER_KIND)):
        target = copy(f"headflip{i}")
        (target / "model.safetensors").write_bytes(_flip(weights, offset))
        yield f"header byte {offset} flipped", target
    for i, offset in enumerate(rng.sample(range(len(config_text)), CASES_PER_KIND)):
        target = copy(f"configflip{i}")
        (target / "config.json").write_bytes(_flip(config_text.encode(), offset))
        yield f"config.json byte {offset} flipped", target
    for i, (path, value) in enumerate(_edited_fields()):
        target = copy(f"edit{i}")
        config = json.loads(config_text)
        _set(config, path, value)
        (target / "config.json").write_text(json.dumps(config))
        yield f"config.json {'.'.join(path)} = {value!r}", target
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    for i, name in enumerate(rng.sample(sorted(tensors), 6)):
        target = copy(f"missing{i}")
        save_file({k: v for k, v in tensors.items() if k != name}, str(target / "model.safetensors"))
        yield f"tensor {name} removed", target
    target = copy("extra")
    save_file({**tensors, "bert.extra": torch.zeros(3)}, str(target / "model.safetensors"))
    yield "extra tensor", target
    for name in ("config.json", "model.safetensors"):
        target = copy(f"no_{name}")
        (target / name).unlink()
        yield f"{name} deleted", target


def test_every_damaged_folder_is_named_or_loads_identically(exported, tmp_path):
    _, inputs, expected = exported
    outcomes = {"refused": 0, "identical": 0}
    for what, folder in _damaged(exported, tmp_path):
        try:
            logits = _logits(folder, inputs)
        except PackedFormatError as err:
            outcomes["refused"] += 1
            message = str(err)
            assert str(folder) in message, (what, message)
            if what.startswith("data byte"):
                assert "tensor '" in message, (what, message)
        else:
            outcomes["identical"] += 1
            assert torch.equal(logits, expected), what
        try:
            size_report(folder)
        except PackedFormatError as err:
            assert str(folder) in str(err), (what, str(err))
    assert outcomes["refused"] > 4 * CASES_PER_KIND, outcomes
