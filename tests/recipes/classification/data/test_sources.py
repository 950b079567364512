"""Your own data through the flags run_classification.py users know: CSV/TSV/JSON/JSONL files and hub datasets,
labels of any kind, bad rows named by file and line."""

import json

import pytest

from xtc_ds.errors import DataError
from xtc_ds.recipes.classification.args import parse_args
from xtc_ds.recipes.classification.data import data_name, load_task_data, read_table

CONFIG = "ds_configs/ds_xtc_1bit.json"


def _args(*flags):
    return parse_args(["--deepspeed_config", CONFIG, *flags])


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


NEWS = ["Stocks rally,business", "Team wins final,sports", "New chip ships,tech", "Election held,world"]


def _news(tmp_path, dev_rows=None):
    train = _csv(tmp_path / "train.csv", "text,label", NEWS * 3)
    dev = _csv(tmp_path / "dev.csv", "text,label", dev_rows or NEWS)
    return train, dev


def test_csv_with_four_string_labels(tmp_path):
    train, dev = _news(tmp_path)
    data = load_task_data(_args("--train_file", train, "--validation_file", dev))
    task = data.task
    assert task.label_names == ("business", "sports", "tech", "world") and not task.pair
    assert task.metrics == ("accuracy", "macro_f1") and task.primary == ("accuracy",)
    assert task.model_labels()["id2label"] == {0: "business", 1: "sports", 2: "tech", 3: "world"}
    assert [e.label for e in data.splits["dev"]] == [0, 1, 2, 3] and len(data.splits["train"]) == 12
    assert data.splits["dev"][0].text_a == "Stocks rally" and data.test is None
    assert task.name == tmp_path.name  # train.csv: named after its folder


def test_integer_labels_sort_numerically_and_metric_choice(tmp_path):
    rows = [f"row {i},{label}" for i, label in enumerate([2, 10, 1, 2, 10, 1])]
    train = _csv(tmp_path / "reviews.csv", "sentence,label", rows)
    data = load_task_data(_args("--train_file", train, "--validation_file", train, "--metric_name", "matthews"))
    assert data.task.label_names == ("1", "2", "10") and data.task.name == "reviews"
    assert data.task.primary == ("matthews_correlation",) and "matthews_correlation" in data.task.metrics
    assert [e.label for e in data.splits["train"][:3]] == [1, 2, 0]


def test_jsonl_regression_and_pairs(tmp_path):
    records = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i / 4} for i in range(8)]
    train = _jsonl(tmp_path / "sim.jsonl", records)
    data = load_task_data(_args("--train_file", train, "--validation_file", train))
    task = data.task
    assert task.is_regression and task.pair and task.metrics == ("pearson", "spearmanr")
    assert task.model_labels() == {"num_labels": 1, "problem_type": "regression"}
    assert data.splits["dev"][3].label == pytest.approx(0.75) and data.splits["dev"][3].text_b == "b3"


def test_do_regression_turns_integer_scores_into_targets(tmp_path):
    train = _csv(tmp_path / "stars.csv", "text,stars", ["bad,1", "ok,3", "great,5"])
    data = load_task_data(
        _args("--train_file", train, "--validation_file", train, "--label_column_name", "stars", "--do_regression")
    )
    assert data.task.is_regression and [e.label for e in data.splits["train"]] == [1.0, 3.0, 5.0]


def test_named_columns_and_tsv_quotes_kept(tmp_path):
    train = tmp_path / "pairs.tsv"
    train.write_text('q\tans\ty\n"Why?\tBecause.\tyes\nHow?\tSo "well".\tno\n', encoding="utf-8")
    data = load_task_data(
        _args(
            "--train_file",
            str(train),
            "--validation_file",
            str(train),
            "--text_column_names",
            "q,ans",
            "--label_column_name",
            "y",
        )
    )
    first = data.splits["train"][0]
    assert (first.text_a, first.text_b, first.label) == ('"Why?', "Because.", 1)  # TSV: a quote is text


@pytest.mark.parametrize(
    "dev_rows, message",
    [
        (
            ["Stocks rally,business", "Mars landing,space"],
            r"dev.csv:3: label 'space' is not one of the labels of .*train.csv",
        ),
        (["Stocks rally,business", ",sports"], r"dev.csv:3: no text in column 'text'"),
        (["Stocks rally,business", "Team wins,"], r"dev.csv:3: no label \(column 'label'\)"),
        (['"A\nmulti-line text",business', "Mars,space"], r"dev.csv:4: label 'space'"),  # quoted newline counted
    ],
)
def test_bad_dev_rows_name_file_and_line(tmp_path, dev_rows, message):
    train, dev = _news(tmp_path, dev_rows)
    with pytest.raises(DataError, match=message):
        load_task_data(_args("--train_file", train, "--validation_file", dev))


def test_bad_regression_target_and_json_records(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}])
    dev = tmp_path / "d.json"
    dev.write_text(json.dumps([{"text": "a", "label": 0.5}, {"text": "b", "label": None}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"d.json: record 2: no label \(column 'label'\)"):
        load_task_data(_args("--train_file", train, "--validation_file", str(dev)))
    nan = tmp_path / "nan.csv"
    nan.write_text("text,label\na,0.5\nb,nan\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"nan.csv:3: regression target 'nan' is not a finite number"):
        load_task_data(_args("--train_file", train, "--validation_file", str(nan)))


def test_column_and_file_errors(tmp_path):
    odd = _csv(tmp_path / "odd.csv", "body,label", ["x,0", "y,1"])

    def on_odd(*flags):
        return _args("--train_file", odd, "--validation_file", odd, *flags)

    with pytest.raises(
        DataError, match=r"odd.csv: no 'sentence', 'text' .* \(columns: body, label\).*--text_column_names"
    ):
        load_task_data(on_odd())
    with pytest.raises(DataError, match=r"odd.csv: no column 'stars' \(columns: body, label\).*--label_column_name"):
        load_task_data(on_odd("--text_column_names", "body", "--label_column_name", "stars"))
    one = _csv(tmp_path / "one.csv", "text,label", ["x,0", "y,0"])
    with pytest.raises(DataError, match="every label is '0'; a classifier needs at least two classes"):
        load_task_data(_args("--train_file", one, "--validation_file", one))
    with pytest.raises(DataError, match=r"data.parquet: unknown data file type"):
        read_table(tmp_path / "data.parquet")
    with pytest.raises(DataError, match=r"absent.csv: no such file"):
        read_table(tmp_path / "absent.csv")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl: cannot be read as JSON"):
        read_table(broken)
    with pytest.raises(DataError, match="--metric_name pearson: not a classification metric"):
        load_task_data(on_odd("--text_column_names", "body", "--metric_name", "pearson"))


def test_test_file_rows_need_no_labels(tmp_path):
    train, dev = _news(tmp_path)
    test = _csv(tmp_path / "test.csv", "id,text", ["7,Rates cut", "8,Cup final"])
    data = load_task_data(_args("--train_file", train, "--validation_file", dev, "--test_file", test, "--do_predict"))
    assert [(e.text_a, e.label) for e in data.test] == [("Rates cut", None), ("Cup final", None)]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task_name", "sst2", "--train_file", "a.csv", "--validation_file", "b.csv"], "choose one source"),
        (["--train_file", "a.csv"], "--train_file needs --validation_file"),
        (["--train_file", "a.csv", "--validation_file", "b.csv", "--test_file", "c.csv"], "add --do_predict"),
        (["--text_column_names", "a"], "GLUE tasks have fixed columns"),
        (["--dataset_name", "x", "--data_dir", "d"], "--data_dir holds GLUE TSVs"),
    ],
)
def test_conflicting_data_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        _args(*flags)
    assert message in capsys.readouterr().err


def test_glue_stays_the_default_and_names_runs():
    args = _args()
    assert args.task_name == "sst2" and data_name(args) == "sst2"
    assert data_name(_args("--dataset_name", "org/news", "--dataset_config_name", "en")) == "org_news-en"


def test_hub_dataset_with_class_labels(monkeypatch):
    datasets = pytest.importorskip("datasets", exc_type=ImportError)
    import xtc_ds.recipes.classification.data.tables as tables

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def fake_load_dataset(name, config, **kwargs):
        assert (name, config) == ("org/reviews", None)
        rows = {"text": ["bad", "good", "fine"], "label": [0, 1, 1]}
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_dict(rows, features=features) for split in ("train", "validation")}
        )

    monkeypatch.setattr(tables, "_offline_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task_data(_args("--dataset_name", "org/reviews"))
    assert data.task.label_names == ("neg", "pos") and [e.label for e in data.splits["dev"]] == [0, 1, 1]
    monkeypatch.setattr(tables, "_offline_reason", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(DataError, match="--dataset_name org/reviews: pass local files with --train_file"):
        load_task_data(_args("--dataset_name", "org/reviews"))
