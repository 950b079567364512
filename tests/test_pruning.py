"""Row and head pruning: masks at the configured ratio and step, related modules pruned with their owner, cleaning
that removes the pruned units without changing the logits, and packed exports of the smaller model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import xtc_ds
from configs import section
from conftest import REPO_ROOT, trainer_resumes_under_this_torch
from models import tiny_bert
from xtc_ds.config import ConfigError
from xtc_ds.export.sparse_codes import BITMAP, VALUES, compact_form, expand_compact
from xtc_ds.nn.packed_linear import packed_weight_tensors
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.ops import fake_quant_weight
from xtc_ds.schedule import quantizers

LEGACY = REPO_ROOT.parent / "shared" / "legacy_configs" / "ds_config_W1or2A8_Qgroup64_fp16.json"
ROW = {
    "shared_parameters": {"enabled": True, "schedule_offset": 0, "method": "l1"},
    "different_groups": {
        "rp1": {
            "params": {"dense_ratio": 0.5},
            "modules": ["intermediate.dense"],
            "related_modules": [["layer.\\w+.output.dense"]],
        }
    },
}
HEAD = {
    "shared_parameters": {"enabled": True, "schedule_offset": 0, "method": "topk", "num_heads": 4},
    "different_groups": {
        "hp1": {
            "params": {"dense_ratio": 0.5},
            "modules": ["attention.output.dense"],
            "related_modules": [["self.query", "self.key", "self.value"]],
        }
    },
}


def _sparse(method: str = "l1", dense_ratio: float = 0.3, offset: int = 0, **group) -> dict:
    """A ``sparse_pruning`` section over every Linear of the layers (``group`` overrides its keys)."""
    return {
        "shared_parameters": {"enabled": True, "schedule_offset": offset, "method": method},
        "different_groups": {"sp1": {"params": {"dense_ratio": dense_ratio}, "modules": ["@layers"], **group}},
    }


def _model(heads: int = 4, hidden: int = 32, layers: int = 2):
    torch.manual_seed(0)
    model = tiny_bert(layers=layers, hidden=hidden)
    if heads != model.config.num_attention_heads:
        from transformers import BertForSequenceClassification

        config = model.config
        config.num_attention_heads = heads
        model = BertForSequenceClassification(config)
    return model.eval()


def _section(base: str = "ds_xtc_1bit.json", row=ROW, head=HEAD, **changes):
    sec = section(base, kd=False)
    if row is not None:
        sec["row_pruning"] = copy.deepcopy(row)
    if head is not None:
        sec["head_pruning"] = copy.deepcopy(head)
    for path, value in changes.items():
        node = sec
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return sec


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 96, (3, 12), generator=torch.Generator().manual_seed(1))


def _layer(model, i=0):
    return model.bert.encoder.layer[i]


def test_masks_keep_the_dense_ratio_from_the_schedule_offset():
    sec = _section(
        row_pruning__shared_parameters__schedule_offset=3,
        head_pruning__shared_parameters__schedule_offset=5,
    )
    model = _model()
    unpruned = _logits(copy.deepcopy(model), IDS)
    xtc_ds.init_compression(model, {"compression_training": sec})
    scheduler = xtc_ds.CompressionScheduler(model)
    ffn_in = _layer(model).intermediate.dense
    assert not ffn_in.row_pruning.enabled and not bool(ffn_in.row_pruning.scored)
    quantized_only = _logits(model, IDS)
    for _ in range(3):
        scheduler.step()
    report = scheduler.report()["pruning"]
    assert report["bert.encoder.layer.0.intermediate.dense.row_pruning"] == {"enabled": True, "kept": 32, "of": 64}
    assert not report["bert.encoder.layer.0.attention.output.dense.head_pruning"]["enabled"]
    model.eval()
    out = ffn_in(torch.randn(5, 32))
    assert int((out.abs().sum(0) == 0).sum()) == 32  # half of the 64 rows (bias included) give 0
    for _ in range(2):
        scheduler.step()
    attention_output = _layer(model).attention.output.dense
    assert attention_output.head_pruning.enabled and attention_output.head_pruning.kept_units == 2
    assert not torch.equal(_logits(model, IDS), quantized_only)
    assert not torch.equal(quantized_only, unpruned)


def test_l1_keeps_the_rows_with_the_largest_norms():
    model = _model()
    weight = _layer(model).intermediate.dense.weight.detach().clone()
    xtc_ds.init_compression(model, {"compression_training": _section(head=None)})
    mask = _layer(model).intermediate.dense.row_pruning
    expected = weight.abs().sum(1).argsort(descending=True, stable=True)[:32].sort().values
    assert torch.equal(mask.kept(), expected)


def test_related_modules_prune_with_their_owner_and_scales_ignore_pruned_weights():
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section()})
    layer = _layer(model)
    heads = layer.attention.output.dense.head_pruning.kept()
    rows = (heads[:, None] * 8 + torch.arange(8)).reshape(-1)  # head size 32 / 4
    x = torch.randn(7, 32)
    query = layer.attention.self.query
    sub = query.weight.detach()[rows]
    expected = x @ fake_quant_weight(sub, 1, 1).t() + query.bias.detach()[rows]
    got = query(x)
    # the act quantizer is on in the recipe: compare against the same input quantization
    xq = query.act_quantizer(x)
    expected = xq @ fake_quant_weight(sub, 1, 1).t() + query.bias.detach()[rows]
    assert torch.allclose(got[:, rows], expected, atol=1e-6)
    kept_ffn = layer.intermediate.dense.row_pruning.kept()
    ffn_out = layer.output.dense
    dropped = torch.ones(64, dtype=torch.bool).index_fill_(0, kept_ffn, False)
    h = torch.randn(7, 64)
    assert torch.equal(ffn_out(h), ffn_out(h * (~dropped).float()))


@pytest.mark.parametrize("recipe", ["ds_xtc_1bit.json", "ds_xtc_2bit.json"])
def test_cleaned_model_is_smaller_and_computes_the_masked_logits_exactly(recipe):
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section(recipe)})
    model.train()
    loss = model(input_ids=IDS, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    model.eval()
    masked = _logits(model, IDS)
    xtc_ds.redundancy_clean(model)
    layer = _layer(model)
    assert tuple(layer.attention.self.query.weight.shape) == (16, 32)
    assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert not any("pruning" in name for name in model.state_dict())
    assert torch.equal(_logits(model, IDS), masked)


def test_topk_scores_get_gradients_for_kept_and_pruned_units():
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section(row=None)})
    model.train()
    model(input_ids=IDS, labels=torch.tensor([0, 1, 0])).loss.backward()
    grad = _layer(model).attention.output.dense.head_pruning.scores.grad
    assert grad is not None and bool((grad != 0).all())


def test_without_related_modules_pruned_units_are_zeroed_not_removed(tmp_path):
    row = copy.deepcopy(ROW)
    del row["different_groups"]["rp1"]["related_modules"]
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section(row=row, head=None)})
    masked = _logits(model, IDS)
    xtc_ds.redundancy_clean(model)
    weight = _layer(model).intermediate.dense.weight
    assert tuple(weight.shape) == (64, 32) and int((weight.abs().sum(1) == 0).sum()) == 32
    assert torch.equal(_logits(model, IDS), masked)
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert block["format_version"] == 2 and "pruned_shapes" not in block


def test_packed_export_stores_the_smaller_model_and_loads_it_back(tmp_path):
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section()})
    with pytest.raises(ValueError, match="redundancy_clean"):
        xtc_ds.export_packed(model, None, tmp_path / "early")
    xtc_ds.redundancy_clean(model)
    cleaned = _logits(model, IDS)
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert block["format_version"] == 3
    assert block["pruned_shapes"]["bert.encoder.layer.1.attention.self.value"] == [16, 32]
    assert block["pruned_shapes"]["bert.encoder.layer.1.output.dense"] == [32, 32]
    loaded = xtc_ds.load_packed(folder)
    assert loaded.bert.encoder.layer[0].attention.self.key.out_features == 16
    assert torch.allclose(_logits(loaded, IDS), cleaned, atol=1e-5)

    unpruned = _model()
    xtc_ds.init_compression(unpruned, {"compression_training": _section(row=None, head=None)})
    xtc_ds.redundancy_clean(unpruned)
    full = xtc_ds.export_packed(unpruned, None, tmp_path / "full")
    size = lambda f: (f / "model.safetensors").stat().st_size  # noqa: E731
    assert size(folder) < size(full)


def test_scheduler_state_restores_the_masks_in_a_reloaded_model(tmp_path):
    sec = _section(row_pruning__shared_parameters__method="l1")
    model = _model()
    xtc_ds.init_compression(model, {"compression_training": sec})
    scheduler = xtc_ds.CompressionScheduler(model)
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(torch.rand(64, 1))
    scheduler.step()
    saved = scheduler.state_dict()
    kept = _layer(model).intermediate.dense.row_pruning.kept()
    fresh = _model()
    xtc_ds.init_compression(fresh, {"compression_training": sec})
    restored = xtc_ds.CompressionScheduler(fresh)
    restored.load_state_dict(saved)
    assert torch.equal(_layer(fresh).intermediate.dense.row_pruning.kept(), kept)
    assert restored.step_count == 1


def _train_legacy(config: dict, steps: int):
    """A 12-head tiny BERT compressed with a legacy config, trained ``steps`` steps in a plain loop."""
    model = _model(heads=12, hidden=48)
    xtc_ds.init_compression(model, config)
    scheduler = xtc_ds.CompressionScheduler(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=IDS, labels=torch.tensor([0, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model


def test_legacy_structured_pruning_config_trains_a_few_steps():
    config = json.loads(LEGACY.read_text())
    sec = config["compression_training"]
    for technique in ("row_pruning", "head_pruning"):
        sec[technique]["shared_parameters"].update(enabled=True, schedule_offset=2)
    model = _train_legacy(config, steps=4)
    assert _layer(model).attention.output.dense.head_pruning.kept_units == 6
    model.eval()
    masked = _logits(model, IDS)
    xtc_ds.redundancy_clean(model)
    assert _layer(model).attention.self.query.out_features == 24
    assert torch.equal(_logits(model, IDS), masked)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"row_pruning__different_groups__rp1__related_modules": [["output.dense"], ["x"]]},
            "related_modules: [['output.dense'], ['x']] (must have one list per entry of modules (1)",
        ),
        (
            {"row_pruning__different_groups__rp1__related_modules": [["no_such_module"]]},
            "rp1.related_modules[0][0]: 'no_such_module' matches no Linear module",
        ),
        (
            {"row_pruning__different_groups__rp1__related_modules": [["attention.self.query"]]},
            "a related module must consume the pruned rows",
        ),
        ({"head_pruning__shared_parameters__num_heads": 3}, "num_heads: 3 (does not divide the 32 inputs"),
        (
            {"row_pruning__different_groups__rp1": {"params": {"dense_ratio": 0.5}, "modules": ["self.query"]}},
            "the output rows of 'bert.encoder.layer.0.attention.self.query' would be pruned by two masks",
        ),
        (
            {
                "weight_quantization__shared_parameters__quantize_groups": 1024,
                "weight_quantization__different_groups__wq1__modules": ["intermediate.dense", "layer.\\d+.output"],
            },
            "quantize_groups: 1024 (does not divide the 32x32 weights that pruning keeps",
        ),
        (
            {"sparse_pruning": _sparse("snip_momentum", offset=1, modules=["self.query"], related_modules=[["key"]])},
            "sp1.related_modules: sparse pruning removes single weights",
        ),
        (
            {"sparse_pruning": _sparse("snip_momentum", offset=1, modules=["intermediate.dense"])},
            "'bert.encoder.layer.0.intermediate.dense' is also pruned by rows or heads",
        ),
        (
            {"sparse_pruning": _sparse("l1", modules=["self.query"], related_modules=[["self.key"]])},
            "sp1.related_modules: sparse pruning removes single weights",
        ),
        (
            {"sparse_pruning": _sparse("l1", modules=["intermediate.dense"])},
            "'bert.encoder.layer.0.intermediate.dense' is also pruned by rows or heads",
        ),
    ],
    ids=[
        "related-length",
        "related-nothing",
        "related-shape",
        "heads",
        "two-masks",
        "groups",
        "snip-related",
        "snip-and-rows",
        "sparse-related",
        "sparse-and-rows",
    ],
)
def test_bad_pruning_configs_name_the_key(changes, message):
    sec = _section(row_pruning__different_groups__rp1__related_modules=[["layer.\\w+.output.dense"]])
    for path, value in changes.items():
        node = sec
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    with pytest.raises(ConfigError) as err:
        xtc_ds.init_compression(_model(), {"compression_training": sec})
    assert message in str(err.value)


@pytest.mark.parametrize("arch", ["roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2"])
def test_every_family_prunes_heads_and_rows_by_role_and_round_trips_packed(arch, tmp_path):
    from models import tiny_model

    torch.manual_seed(0)
    model = tiny_model(arch).eval()
    roles = {
        "head_pruning": {**HEAD["shared_parameters"], "num_heads": 2},
        "row_pruning": ROW["shared_parameters"],
    }
    sec = section("ds_xtc_1bit.json", kd=False)
    sec["head_pruning"] = {
        "shared_parameters": roles["head_pruning"],
        "different_groups": {
            "hp": {
                "params": {"dense_ratio": 0.5},
                "modules": ["@attention.output"],
                "related_modules": [["@attention.qkv"]],
            }
        },
    }
    sec["row_pruning"] = {
        "shared_parameters": roles["row_pruning"],
        "different_groups": {
            "rp": {"params": {"dense_ratio": 0.5}, "modules": ["@ffn.in"], "related_modules": [["@ffn.out"]]}
        },
    }
    xtc_ds.init_compression(model, {"compression_training": sec})
    ids = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(2))
    masked = _logits(model, ids)
    xtc_ds.redundancy_clean(model)
    cleaned = _logits(model, ids)
    assert torch.allclose(cleaned, masked, atol=1e-6)
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    shapes = json.loads((folder / "config.json").read_text())["quantization_config"]["pruned_shapes"]
    assert sorted({tuple(shape) for shape in shapes.values()}) == [(16, 32), (32, 16), (32, 32)]
    assert torch.allclose(_logits(xtc_ds.load_packed(folder), ids), cleaned, atol=1e-5)


def test_trainer_job_prunes_resumes_with_its_masks_and_saves_the_smaller_model(tmp_path):
    pytest.importorskip("accelerate")
    if not trainer_resumes_under_this_torch():
        pytest.skip("this transformers cannot resume any Trainer checkpoint under torch >= 2.6 (rng_state.pth)")
    import datasets

    from xtc_ds.integrations import XtcTrainer, XtcTrainingArguments

    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"compression_training": _section(row_pruning__shared_parameters__method="topk")}))
    ids = torch.randint(1, 96, (16, 10), generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})

    def trainer(max_steps):
        args = XtcTrainingArguments(
            output_dir=str(tmp_path / "out"),
            compression_config=str(config),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=4,
            learning_rate=1e-1,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=2,
            disable_tqdm=True,
            seed=0,
        )
        torch.manual_seed(0)
        return XtcTrainer(model=_model(), args=args, train_dataset=data)

    continuous = trainer(4)
    continuous.train()
    owner = "bert.encoder.layer.0.intermediate.dense"
    trained = continuous.model.get_submodule(owner).row_pruning
    resumed = trainer(4)
    mask = resumed.model.get_submodule(owner).row_pruning
    assert not torch.equal(mask.kept(), trained.kept())  # training moved the scores away from the L1 norms
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.xtc.scheduler.step_count == 4
    assert torch.allclose(mask.scores, trained.scores, atol=1e-5)
    assert torch.equal(mask.kept(), trained.kept())
    model = resumed.model.eval()
    masked = _logits(model, IDS)
    folder = resumed.save_packed(tmp_path / "packed")
    assert _layer(model).intermediate.dense.out_features == 32
    assert torch.allclose(_logits(xtc_ds.load_packed(folder, attn_implementation="eager"), IDS), masked, atol=1e-5)


@pytest.mark.parametrize("method", ["l1", "topk"])
def test_sparse_masks_keep_the_ratio_and_binary_scales_come_from_kept_weights(method):
    model = _model()
    sec = _section(row=None, head=None)
    sec["sparse_pruning"] = _sparse(method, offset=2)
    xtc_ds.init_compression(model, {"compression_training": sec})
    scheduler = xtc_ds.CompressionScheduler(model)
    query = _layer(model).attention.self.query
    assert not query.sparse_pruning.enabled and bool((query.quantized_weight() != 0).all())
    scheduler.step()
    scheduler.step()
    weight = query.quantized_weight().detach()
    keep = weight != 0
    assert int(keep.sum()) == 308  # ceil(0.3 * 32 * 32)
    magnitude = query.weight.detach().abs()
    assert float(magnitude[keep].min()) >= float(magnitude[~keep].max())  # the largest |w| (topk starts from them)
    alpha = magnitude[keep].double().mean().float()  # one scale (quantize_groups 1), over the kept weights only
    assert torch.equal(weight[keep].abs().unique(), alpha.reshape(1))
    if method == "topk":
        model.train()
        model(input_ids=IDS, labels=torch.tensor([0, 1, 0])).loss.backward()
        assert bool((query.sparse_pruning.scores.grad != 0).any())


@pytest.mark.parametrize("recipe", ["ds_xtc_1bit.json", "ds_xtc_2bit.json"])
def test_sparse_cleaned_model_computes_the_masked_logits_and_exports_ternary_codes(recipe, tmp_path):
    """A pruned weight is a third level beside the quantized ones, so 1-bit and ternary sparse weights both store
    ternary codes; a 1-bit one holds exactly {-a, 0, +a} with zeros only where it is pruned."""
    model = _model()
    sec = _section(recipe, row=None, head=None)
    sec["sparse_pruning"] = _sparse("topk", dense_ratio=0.5)
    xtc_ds.init_compression(model, {"compression_training": sec})
    masked = _logits(model, IDS)
    xtc_ds.redundancy_clean(model)
    assert torch.equal(_logits(model, IDS), masked)
    assert not any("pruning" in name for name in model.state_dict())
    weight = _layer(model).output.dense.weight
    zeros = float((weight == 0).float().mean())
    if "1bit" in recipe:
        assert zeros == 0.5 and weight.unique().numel() == 3  # the pruned half, and +-alpha elsewhere
        assert weight.unique()[0] == -weight.unique()[2]
    else:
        assert zeros > 0.5  # ternary adds zeros of its own to the pruned half
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert block["modules"]["bert.encoder.layer.0.output.dense"]["bits"] == 2
    assert "bert.encoder.layer.0.output.dense" in block["compact_sparse"] and block["format_version"] == 3
    tensors = load_file(str(folder / "model.safetensors"))
    stored = sum(tensors[f"bert.encoder.layer.0.output.dense.{leaf}"].numel() for leaf in (BITMAP, VALUES))
    assert stored < 32 * 64 * 2 // 8  # smaller than the 2-bit codes of every weight
    assert torch.allclose(_logits(xtc_ds.load_packed(folder), IDS), masked, atol=1e-5)


def _spec(bits: int, symmetric: bool = True) -> PackedSpec:
    return PackedSpec("linear", 12, 20, bits=bits, num_groups=12, symmetric=symmetric)


@pytest.mark.parametrize("bits, density", [(2, 0.5), (4, 0.3), (8, 0.3)])
def test_compact_sparse_form_round_trips_to_the_same_codes(bits, density):
    torch.manual_seed(0)
    weight = torch.randn(12, 20) * (torch.rand(12, 20) < density)
    spec = _spec(bits)
    packed = packed_weight_tensors(weight, spec)["packed_weight"]
    compact = compact_form(packed, spec)
    assert compact is not None and sum(t.numel() for t in compact.values()) < packed.numel()
    assert torch.equal(expand_compact(compact[BITMAP], compact[VALUES], spec), packed)
    with pytest.raises(ValueError, match="sparse_values must hold"):
        expand_compact(compact[BITMAP], compact[VALUES][:-1], spec)


def test_compact_sparse_form_is_not_used_where_it_is_not_smaller():
    dense = torch.randn(12, 20)
    assert compact_form(packed_weight_tensors(dense, _spec(8))["packed_weight"], _spec(8)) is None
    sparse = dense * (torch.rand(12, 20) < 0.3)
    asymmetric = _spec(8, symmetric=False)  # its zero code differs by group
    assert compact_form(packed_weight_tensors(sparse, asymmetric)["packed_weight"], asymmetric) is None


def test_legacy_sparse_pruning_config_trains_a_few_steps():
    config = json.loads(LEGACY.read_text())
    config["compression_training"]["sparse_pruning"]["shared_parameters"].update(enabled=True, schedule_offset=2)
    model = _train_legacy(config, steps=3)
    key = _layer(model).attention.self.key.quantized_weight()
    assert float((key == 0).float().mean()) == 0.5
    levels = [group.unique().numel() for group in key.detach().reshape(64, -1)]
    assert max(levels) == 3 and min(levels) >= 2  # -a, 0, +a per group (quantize_groups 64)


CHANNEL = {
    "shared_parameters": {"enabled": True, "schedule_offset": 0, "method": "l1"},
    "different_groups": {"cp1": {"params": {"dense_ratio": 0.5}, "modules": ["conv"]}},
}


def test_channel_pruning_is_skipped_with_a_warning_on_a_model_without_conv2d(caplog):
    sec = _section(row=None, head=None)
    sec["channel_pruning"] = copy.deepcopy(CHANNEL)
    xtc_ds.init_compression(_model(), {"compression_training": sec})
    assert "channel_pruning is enabled but BertForSequenceClassification has no Conv2d module" in caplog.text


def test_a_pruned_model_saved_with_save_pretrained_loads_back_with_load_cleaned(tmp_path):
    from transformers import BertForSequenceClassification

    model = _model()
    xtc_ds.init_compression(model, {"compression_training": _section()})
    xtc_ds.redundancy_clean(model)
    model.save_pretrained(tmp_path / "final")
    for _, quantizer in quantizers(model)[1]:
        quantizer.enabled = False  # the folder holds weights; activations run in float when it is loaded
    cleaned = _logits(model, IDS)
    with pytest.raises(Exception, match="ignore_mismatched_sizes|size mismatch"):  # every layer built at full size
        BertForSequenceClassification.from_pretrained(tmp_path / "final")
    loaded = xtc_ds.load_cleaned(tmp_path / "final", attn_implementation="eager")
    assert not loaded.training and _layer(loaded).attention.self.query.out_features == 16
    assert _layer(loaded).intermediate.dense.out_features == 32 and _layer(loaded).output.dense.in_features == 32
    assert torch.equal(_logits(loaded, IDS), cleaned)


def test_load_cleaned_names_the_file_of_a_damaged_or_oversized_tensor(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    model.save_pretrained(tmp_path / "plain")
    assert torch.equal(
        _logits(xtc_ds.load_cleaned(tmp_path / "plain", attn_implementation="eager"), IDS), _logits(model, IDS)
    )
    weights_file = tmp_path / "plain" / "model.safetensors"
    tensors = load_file(weights_file)
    tensors["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 32)
    save_file(tensors, weights_file, metadata={"format": "pt"})
    with pytest.raises(xtc_ds.PackedFormatError, match=r"model.safetensors.*intermediate.dense: \[128, 32\]"):
        xtc_ds.load_cleaned(tmp_path / "plain")
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(xtc_ds.PackedFormatError, match=r"model.safetensors"):
        xtc_ds.load_cleaned(tmp_path / "plain")


def test_the_export_command_reads_a_pruned_cleaned_folder(tmp_path):
    from xtc_ds.export.__main__ import main as export_main

    config = {"compression_training": _section()}
    model = _model()
    xtc_ds.init_compression(model, config)
    xtc_ds.redundancy_clean(model)
    cleaned = _logits(model, IDS)
    model.save_pretrained(tmp_path / "final")
    (tmp_path / "ds.json").write_text(json.dumps(config))
    export_main(
        ["--model", str(tmp_path / "final"), "--deepspeed_config", str(tmp_path / "ds.json")]
        + ["--output_dir", str(tmp_path / "packed")]
    )
    loaded = xtc_ds.load_packed(tmp_path / "packed", attn_implementation="eager")
    assert _layer(loaded).attention.self.query.out_features == 16
    assert torch.allclose(_logits(loaded, IDS), cleaned, atol=1e-5)
