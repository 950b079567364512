"""The legacy schema loads verbatim; malformed configs fail at load time naming the key path."""

import copy
import json

import pytest

from conftest import REPO_ROOT, legacy_config_paths, read_json
from xtc_ds import CompressionConfig, ConfigError, load_compression_config
from xtc_ds.config import PER_ROW, QuantizationType, RangeCalibration, split_deepspeed_config

WQ = "compression_training.weight_quantization"
AQ = "compression_training.activation_quantization"


def test_legacy_configs_are_present():
    assert len(legacy_config_paths()) == 5, "expected the five legacy configs in ../shared/legacy_configs"


@pytest.mark.parametrize("path", legacy_config_paths(), ids=lambda p: p.name)
def test_legacy_config_loads_and_round_trips(path):
    config = load_compression_config(path)
    assert (
        config.weight_quantization.enabled
        == read_json(path)["compression_training"]["weight_quantization"]["shared_parameters"]["enabled"]
    )
    assert load_compression_config(config.to_dict()) == config
    assert load_compression_config(str(path)) == load_compression_config(read_json(path))
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


def test_legacy_values_are_read():
    config = load_compression_config(LEGACY("ds_config_W1or2A8_Qgroup64_fp16.json"))
    wq = config.weight_quantization
    assert wq.shared_parameters.quantize_groups == 64
    assert wq.different_groups["wq2"].params.target_bits == 2
    assert wq.different_groups["wq2"].modules == ("output.dense",)
    assert config.activation_quantization.shared_parameters.range_calibration is RangeCalibration.DYNAMIC
    assert config.head_pruning.shared_parameters.num_heads == 12
    assert config.row_pruning.different_groups["rp1"].related_modules == (("layer.\\w+.output.dense",),)
    reduction = load_compression_config(LEGACY("XTC/ds_config_layer_reduction_fp16.json")).layer_reduction
    assert reduction.enabled and reduction.teacher_layer == (1, 3, 5, 7, 9, 11)


def LEGACY(name):
    return REPO_ROOT.parent / "shared" / "legacy_configs" / name


def test_defaults_follow_legacy_code():
    config = CompressionConfig()
    assert not config.enabled
    assert config.activation_quantization.shared_parameters.schedule_offset == 1000
    assert config.weight_quantization.shared_parameters.quantization_type is QuantizationType.SYMMETRIC
    assert config.sparse_pruning.shared_parameters.schedule_offset == 1000


def test_star_default_and_bare_string_modules():
    section = {
        "weight_quantization": {
            "shared_parameters": {"enabled": True},
            "different_groups": {"g": {"params": {"start_bits": 1, "target_bits": 1}}},
        }
    }
    assert load_compression_config(section).weight_quantization.different_groups["g"].modules == ("*",)
    section["weight_quantization"]["different_groups"]["g"]["modules"] = "query"
    assert load_compression_config(section).weight_quantization.different_groups["g"].modules == ("query",)


def test_ds_config_without_section_is_all_disabled():
    assert load_compression_config({"train_batch_size": 8}) == CompressionConfig()


def test_split_removes_section():
    compression, rest = split_deepspeed_config(LEGACY("XTC/ds_config_W1A8_Qgroup1_fp32.json"))
    assert "compression_training" not in rest and rest["train_batch_size"] == 32
    assert compression.weight_quantization.enabled


def test_per_row_groups_accepted():
    section = {
        "weight_quantization": {
            "shared_parameters": {"enabled": True, "quantize_groups": PER_ROW},
            "different_groups": {"g": {"params": {"start_bits": 1, "target_bits": 1}}},
        }
    }
    assert load_compression_config(section).weight_quantization.shared_parameters.quantize_groups == PER_ROW


def _base():
    return copy.deepcopy(read_json(LEGACY("XTC/ds_config_layer_reduction_W1Q8_fp32.json")))


def _set(cfg, dotted, value):
    node = cfg["compression_training"]
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


_DELETE = object()

MALFORMED = [
    (
        "weight_quantization.different_groups.wq1.params.target_bits",
        0,
        f"{WQ}.different_groups.wq1.params.target_bits: 0 (must be 1..8)",
    ),
    (
        "weight_quantization.different_groups.wq1.params.target_bits",
        9,
        f"{WQ}.different_groups.wq1.params.target_bits: 9",
    ),
    (
        "weight_quantization.different_groups.wq1.params.start_bits",
        "8",
        f"{WQ}.different_groups.wq1.params.start_bits: '8'",
    ),
    (
        "weight_quantization.different_groups.wq1.params.target_bits",
        _DELETE,
        f"{WQ}.different_groups.wq1.params.target_bits: missing",
    ),
    (
        "weight_quantization.different_groups.wq1.params.quantization_period",
        -1,
        f"{WQ}.different_groups.wq1.params.quantization_period: -1",
    ),
    ("weight_quantization.shared_parameters.quantize_groups", 0, f"{WQ}.shared_parameters.quantize_groups: 0"),
    ("weight_quantization.shared_parameters.schedule_offset", -5, f"{WQ}.shared_parameters.schedule_offset: -5"),
    (
        "weight_quantization.shared_parameters.enabled",
        "yes",
        f"{WQ}.shared_parameters.enabled: 'yes' (must be true or false)",
    ),
    (
        "weight_quantization.shared_parameters.quantization_type",
        "asymmetric",
        f"{WQ}.shared_parameters.quantization_type: 'asymmetric' (1- and 2-bit groups",
    ),
    ("weight_quantization.shared_parameters.rounding", "stochastic", f"{WQ}.shared_parameters.rounding: 'stochastic'"),
    (
        "weight_quantization.shared_parameters.rounding",
        "nearest_neighbor",
        f"{WQ}.shared_parameters.rounding: 'nearest_neighbor' (must be one of 'nearest', 'stochastic')",
    ),
    ("weight_quantization.shared_parameters.quantize_grups", 4, "did you mean 'quantize_groups'"),
    ("weight_quantization.different_groups.wq1.modules", [], f"{WQ}.different_groups.wq1.modules: []"),
    (
        "weight_quantization.different_groups.wq1.modules",
        ["attention.(self"],
        f"{WQ}.different_groups.wq1.modules[0]: 'attention.(self' (invalid regular expression",
    ),
    ("weight_quantization.different_groups", {}, f"{WQ}.different_groups: missing or empty"),
    (
        "activation_quantization.different_groups.aq1.params.bits",
        6,
        f"{AQ}.different_groups.aq1.params.bits: 6 (must be 4 or 8)",
    ),
    (
        "activation_quantization.shared_parameters.range_calibration",
        "minmax",
        f"{AQ}.shared_parameters.range_calibration: 'minmax'",
    ),
    ("layer_reduction.teacher_layer", [1, 3, 3, 7, 9, 11], "compression_training.layer_reduction.teacher_layer"),
    (
        "layer_reduction.teacher_layer",
        [1, -3, 5, 7, 9, 11],
        "compression_training.layer_reduction.teacher_layer[1]: -3",
    ),
    ("layer_reduction.keep_number_layer", 4, "compression_training.layer_reduction.keep_number_layer: 4"),
    ("layer_reduction.module_name_prefix", "", "compression_training.layer_reduction.module_name_prefix: ''"),
    (
        "sparse_pruning.shared_parameters.method",
        "l2",
        "compression_training.sparse_pruning.shared_parameters.method: 'l2'",
    ),
    (
        "row_pruning.different_groups.rp1.params.dense_ratio",
        1.5,
        "compression_training.row_pruning.different_groups.rp1.params.dense_ratio: 1.5",
    ),
    (
        "head_pruning.shared_parameters.method",
        "l1",
        "compression_training.head_pruning.shared_parameters.method: 'l1'",
    ),
    (
        "channel_pruning",
        {"shared_parameters": {"enabled": True}},
        "compression_training.channel_pruning.different_groups",
    ),
    (
        "knowledge_distillation",
        {"enabled": True, "temperature": 0},
        "compression_training.knowledge_distillation.temperature: 0.0",
    ),
    ("knowledge_distillation", {"enabled": True, "hidden_wieght": 1.0}, "did you mean 'hidden_weight'"),
    (
        "weight_quantisation",
        {},
        "compression_training.weight_quantisation: unknown key; did you mean 'weight_quantization'",
    ),
]


@pytest.mark.parametrize("key, value, message", MALFORMED, ids=[m[0] + "=" + repr(m[1])[:20] for m in MALFORMED])
def test_malformed_config_names_key_path(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_compression_config(_set(_base(), key, value))
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_enabled_channel_pruning_and_snip_momentum_load():
    section = {"shared_parameters": {"enabled": True}, "different_groups": {"g": {"params": {"dense_ratio": 0.5}}}}
    assert load_compression_config(_set(_base(), "channel_pruning", section)).channel_pruning.enabled
    snip = {"shared_parameters": {"enabled": True, "method": "snip_momentum", "schedule_offset": 30}}
    parsed = load_compression_config(_set(_base(), "sparse_pruning", snip)).sparse_pruning.shared_parameters
    assert parsed.offset_end == 30 and parsed.block_pattern == "4x1" and parsed.dense_ratio == 0.1


def test_enabled_row_and_head_pruning_load():
    config = _set(_base(), "head_pruning.shared_parameters.enabled", True)
    config = _set(config, "row_pruning.shared_parameters.enabled", True)
    parsed = load_compression_config(config)
    assert parsed.head_pruning.enabled and parsed.row_pruning.enabled


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json: DeepSpeed config file not found"):
        load_compression_config(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_compression_config(bad)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_ds_configs_parse(path):
    config = load_compression_config(path)
    assert config.enabled
    _, rest = split_deepspeed_config(path)
    assert "compression_training" not in rest
