"""Seeded config fuzzing: mutated shipped and legacy configs either load or raise ConfigError, and an enabled
technique is never silently dropped (it is enabled in the loaded config and matches modules of a BERT)."""

import copy
import json
import random
from collections import Counter

import pytest

from conftest import REPO_ROOT, legacy_config_paths, read_json, tiny_bert
from xtc_ds import ConfigError, load_compression_config
from xtc_ds.config import SECTION
from xtc_ds.matching import plan_injection

MUTANTS = 2400
VALUES = [None, 5, True, False, 0.0, "x", [], {}, -1, 0, 1, 1e308, float("inf"), float("nan"), [1, 2], {"a": 1}]
VALUES += ["per_row", 10**30, 1e-308, "symmetric", ["x"], [[1]], 3.5, 2**63, "(", ".*", 8, 4, 2]
TECHNIQUES = ("weight_quantization", "activation_quantization", "layer_reduction", "knowledge_distillation")


def _sources():
    paths = sorted((REPO_ROOT / "ds_configs").glob("*.json")) + legacy_config_paths()
    return [read_json(path) for path in paths]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _mutant(source, rng):
    """One to three random edits: a value replaced, a key misspelt (one letter dropped) or deleted."""
    config = copy.deepcopy(source if rng.random() < 0.8 else source[SECTION])
    for _ in range(rng.randint(1, 3)):
        path = rng.choice([p for p in _paths(config) if p])
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        key, roll = path[-1], rng.random()
        if roll < 0.6 or not isinstance(parent, dict):
            parent[key] = rng.choice(VALUES)
        elif roll < 0.85:
            cut = rng.randrange(len(str(key)))
            parent[str(key)[:cut] + str(key)[cut + 1 :]] = parent.pop(key)
        else:
            del parent[key]
    return config


def _enabled_in(section, technique):
    """Whether the (mutated) raw section turns ``technique`` on."""
    node = section.get(technique) if isinstance(section, dict) else None
    if technique in ("weight_quantization", "activation_quantization"):
        node = node.get("shared_parameters") if isinstance(node, dict) else None
    return isinstance(node, dict) and node.get("enabled") is True


@pytest.fixture(scope="module")
def bert12():
    return tiny_bert(layers=12, hidden=16)


def test_mutated_configs_load_or_fail_cleanly(bert12):
    rng = random.Random(20261129)
    sources = _sources()
    outcomes = Counter()
    for i in range(MUTANTS):
        mutant = _mutant(rng.choice(sources), rng)
        try:
            config = load_compression_config(mutant)
        except ConfigError:
            outcomes["ConfigError"] += 1
            continue
        outcomes["loaded"] += 1
        raw = mutant.get(SECTION, mutant)
        for technique in TECHNIQUES:
            assert getattr(config, technique).enabled == _enabled_in(raw, technique), (i, technique, mutant)
        try:
            plans = plan_injection(bert12, config)
        except ConfigError:
            outcomes["ConfigError against the model"] += 1
            continue
        if config.weight_quantization.enabled:
            assert any(plan.weight_group for plan in plans.values()), (i, mutant)
        if config.activation_quantization.enabled:
            assert any(plan.act_group for plan in plans.values()), (i, mutant)
    print(f"\nconfig fuzzing, {MUTANTS} mutants: {dict(outcomes)}")
    assert outcomes["loaded"] > MUTANTS // 10 and outcomes["ConfigError"] > MUTANTS // 2


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"compresion_training": {}},
            "compresion_training: unknown top-level key; did you mean 'compression_training'",
        ),
        ({"train_batch_size": 8, "Compression_training": {}}, "did you mean 'compression_training'"),
        ({"knowledge_distilation": {"enabled": True}}, "knowledge_distilation: unknown key; did you mean"),
        ({"train_batch_size": 8, "layer_reduction": {}}, "layer_reduction: a compression_training key at the top"),
        ({SECTION: None}, "compression_training: None"),
        ({SECTION: []}, "compression_training: \\[\\]"),
        ({SECTION: 5}, "compression_training: 5"),
        ({SECTION: "x"}, "compression_training: 'x'"),
        ({SECTION: {"knowledge_distillation": {"temperature": float("inf")}}}, "temperature: inf"),
        ({SECTION: {"knowledge_distillation": {"temperature": 1e200}}}, "temperature: 1e\\+200 \\(must be in"),
        ({SECTION: {"knowledge_distillation": {"temperature": 1e-308}}}, "temperature: 1e-308 \\(must be in"),
        ({SECTION: {"knowledge_distillation": {"hidden_weight": float("nan")}}}, "hidden_weight: nan"),
        ({SECTION: {"knowledge_distillation": {"logits_weight": 1e308}}}, "logits_weight: 1e\\+308"),
        ({SECTION: {"knowledge_distillation": {"temperature": 10**400}}}, "must be a finite number"),
    ],
)
def test_near_misses_and_bad_values_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        load_compression_config(config)


@pytest.mark.parametrize("value", [None, 5, True, 0.0, "x", [1]])
def test_anything_but_a_config_is_a_config_error(value):
    with pytest.raises(ConfigError):
        load_compression_config(value)


def test_deepspeed_own_weight_quantization_key_is_left_to_deepspeed():
    ds = {"train_batch_size": 8, "weight_quantization": {"post_init_quant": {}}}
    assert not load_compression_config(ds).enabled


def test_one_weight_per_group_is_refused(bert12):
    config = json.loads((REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json").read_text())
    config[SECTION]["weight_quantization"]["shared_parameters"]["quantize_groups"] = 16 * 16
    config[SECTION]["weight_quantization"]["different_groups"]["wq1"]["modules"] = ["attention.self"]
    with pytest.raises(ConfigError, match="one weight per group"):
        plan_injection(bert12, load_compression_config(config))


def test_a_config_without_the_section_warns_that_nothing_is_compressed(caplog, monkeypatch):
    from xtc_ds import _log, init_compression

    for config, warned in (({"train_batch_size": 8}, True), ({"train_batch_size": 8, SECTION: {}}, False)):
        monkeypatch.setattr(_log, "_warned", set())  # warnings are once per process
        caplog.clear()
        with caplog.at_level("WARNING", logger="xtc_ds"):
            init_compression(tiny_bert(), config)  # an explicit empty section is a choice, not an oversight
        assert ("has no compression_training section: nothing is compressed" in caplog.text) == warned
