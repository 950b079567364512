"""Every GLUE TSV layout reads into the same examples; malformed rows name file and line; offline errors are clear."""

import pytest
import torch

from conftest import GLUE_DIR, glue_task_dir, tiny_bert
from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.data import Example, encode, get_task, load_glue, trim_padding
from xtc_ds.recipes.classification.data.glue import read_glue_tsv, resolve_task_dir

# (task, dev rows, first dev example) from the official files in ../shared/data/glue
OFFICIAL = [
    ("cola", 1043, ("The sailors rode the breeze clear of the rocks.", None, 1)),
    ("sst2", 872, ("it 's a charming and often affecting journey . ", None, 1)),
    (
        "mrpc",
        408,
        (
            "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
            '" The foodservice pie business does not fit our long-term growth strategy .',
            1,
        ),
    ),
    ("stsb", 1500, ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    ("rte", 277, (None, "Christopher Reeve had an accident.", 1)),
    ("wnli", 71, ("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0)),
]


@pytest.mark.parametrize("name, rows, first", OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_official_tsv_layouts(name, rows, first):
    task = get_task(name)
    examples = read_glue_tsv(glue_task_dir(task.folder) / "dev.tsv", task)
    assert len(examples) == rows
    got = examples[0]
    if first[0] is not None:
        assert got.text_a == first[0]
    assert (got.text_b, got.label) == first[1:]
    assert all(isinstance(e.label, float if task.task.is_regression else int) for e in examples)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_qqp_mnli_qnli_layouts(tmp_path):
    qqp = _write(tmp_path / "qqp.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tA?\tB?\t1\n")
    assert read_glue_tsv(qqp, get_task("qqp"))[0] == Example("A?", "B?", 1)
    header = "index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\tlabel1\tgold_label\n"
    mnli = _write(tmp_path / "mnli.tsv", header + "0\t1\t2\tg\tx\tx\tx\tx\tPremise.\tHypo.\tneutral\tneutral\n")
    example = read_glue_tsv(mnli, get_task("mnli"))[0]
    assert (example.text_a, example.text_b, example.label) == ("Premise.", "Hypo.", 1)
    qnli = _write(tmp_path / "qnli.tsv", "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tnot_entailment\n")
    assert read_glue_tsv(qnli, get_task("qnli"))[0].label == 1


def test_mnli_has_matched_and_mismatched_dev(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\tlabel1\tgold_label\n"
    row = "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tentailment\tentailment\n"
    for split in ("train", "dev_matched", "dev_mismatched"):
        _write(tmp_path / f"{split}.tsv", header + row)
    splits = load_glue(get_task("mnli"), str(tmp_path))
    assert set(splits) == {"train", "dev_matched", "dev_mismatched"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("sentence\tlabel\ngood movie\t1\nbad\n", ":3: no label (column 'label')"),
        (
            "sentence\tlabel\ngood movie\t1\nbad\tpositive\n",
            ":3: label 'positive' is not one of the labels: ['0', '1']",
        ),
        (
            "sentence\tlabel\ngood\tmovie\t1\n",
            ": a row has more fields than the header (is there a tab inside a text?)",
        ),
        ("sentence\tlabel\nok\t1\ngood\tmovie\t1\n", ":3: 3 fields, rows have 2 (is there a tab inside a text?)"),
        ("sentence\tlabel\n\t1\n", ":2: no text in column 'sentence'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, content, message):
    path = _write(tmp_path / "train.tsv", content)
    with pytest.raises(DataError) as err:
        read_glue_tsv(path, get_task("sst2"))
    assert str(path) + message in str(err.value)


@pytest.mark.parametrize(
    "score, message",
    [
        ("five", "is not a number"),
        ("nan", "is not a finite number in"),
        ("inf", "is not a finite"),
        ("99", r"is not a finite number in \[0, 5\]"),
    ],
)
def test_bad_stsb_score(tmp_path, score, message):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = _write(
        tmp_path / "dev.tsv", header + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t1.5\n" + f"1\tg\tf\ty\t0\tn\tn\tA.\tB.\t{score}\n"
    )
    with pytest.raises(DataError, match=f"dev.tsv:3: regression target '{score}' {message}"):
        read_glue_tsv(path, get_task("stsb"))


def test_rte_text_with_a_tab_is_refused_not_split(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel\n"
    path = _write(tmp_path / "train.tsv", header + "0\tA\tcat.\tA dog.\tentailment\n")
    with pytest.raises(DataError, match="train.tsv: a row has more fields than the header"):
        read_glue_tsv(path, get_task("rte"))


@pytest.mark.parametrize("garbage, line", [(b"caf\xe9\t1\n", 3), (b"\x00\xff\xfe\x80\x81\n", 3)])
def test_non_utf8_bytes_name_file_and_line(tmp_path, garbage, line):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\ngood\t1\n" + garbage)
    with pytest.raises(DataError, match=f"train.tsv:{line}: not UTF-8 text"):
        read_glue_tsv(path, get_task("sst2"))


def test_data_dir_accepts_root_or_task_folder_and_glue_dir(monkeypatch):
    glue_task_dir("SST-2")
    task = get_task("sst2")
    assert resolve_task_dir(task, str(GLUE_DIR)) == GLUE_DIR / "SST-2"
    assert resolve_task_dir(task, str(GLUE_DIR / "SST-2")) == GLUE_DIR / "SST-2"
    monkeypatch.setenv("GLUE_DIR", str(GLUE_DIR))
    assert resolve_task_dir(task, None) == GLUE_DIR / "SST-2"
    with pytest.raises(DataError, match="--data_dir /nonexistent: no train.tsv"):
        resolve_task_dir(task, "/nonexistent")


def test_offline_without_local_data_stops_at_once(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"pass --data_dir .* or set \$GLUE_DIR; .* HF_DATASETS_OFFLINE is set"):
        load_glue(get_task("rte"))


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown GLUE task"):
        get_task("squad")
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").name == "stsb"


def test_encode_pairs_and_regression_labels():
    from transformers import BertTokenizerFast

    from conftest import minilm_path

    tokenizer = BertTokenizerFast.from_pretrained(minilm_path())
    task = get_task("stsb")
    examples = read_glue_tsv(glue_task_dir("STS-B") / "dev.tsv", task)[:4]
    tensors = encode(examples, tokenizer, 24, task.task)
    assert tensors["input_ids"].shape == (4, 24) and tensors["labels"].dtype == torch.float32
    assert (tensors["token_type_ids"][0] == 1).any()  # the second sentence is segment B


def test_trim_padding_cuts_to_the_longest_row_and_keeps_logits():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    batch = {
        "input_ids": torch.randint(1, 96, (2, 6)) * mask,
        "token_type_ids": torch.zeros(2, 6, dtype=torch.long),
        "attention_mask": mask,
        "labels": torch.tensor([0, 1]),
    }
    trimmed = trim_padding(batch)
    assert {k: tuple(v.shape) for k, v in trimmed.items()} == {
        "input_ids": (2, 3),
        "token_type_ids": (2, 3),
        "attention_mask": (2, 3),
        "labels": (2,),
    }
    assert torch.equal(trimmed["input_ids"], batch["input_ids"][:, :3])
    model = tiny_bert().eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        full = model(**inputs).logits
        cut = model(**{k: v for k, v in trimmed.items() if k != "labels"}).logits
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    unpadded = {k: v[:, :3] for k, v in batch.items() if k != "labels"}
    assert trim_padding(unpadded) is unpadded


def test_hub_datasets_map_to_the_same_examples(monkeypatch):
    datasets = pytest.importorskip("datasets", exc_type=ImportError)  # skips where it cannot import
    import xtc_ds.recipes.classification.data.tables as tables

    def fake_load_dataset(name, config, **kwargs):
        assert (name, config) == ("nyu-mll/glue", "mnli")
        row = {"premise": ["P."], "hypothesis": ["H."], "label": [2], "idx": [0]}
        splits = ("train", "validation_matched", "validation_mismatched")
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(row) for split in splits})

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(tables, "_offline_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_glue(get_task("mnli"))
    assert set(splits) == {"train", "dev_matched", "dev_mismatched"}
    assert splits["dev_mismatched"] == [Example("P.", "H.", 2)]  # hub label 2 = contradiction, as in TSVs
    assert (
        get_task("mnli").tsv_labels["contradiction"] == 2 and get_task("mnli").task.label_names[2] == "contradiction"
    )
