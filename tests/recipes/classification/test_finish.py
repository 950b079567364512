"""Nothing fails late: the optional outputs are decided before training, and a step after training that fails
leaves the results on disk, names the command that redoes it and ends the run with exit code 3."""

import json
import sys

import pytest

from conftest import REPO_ROOT
from models import save_tiny_teacher
from text_files import news_csv
from xtc_ds.recipes.classification import finish as finish_module
from xtc_ds.recipes.classification import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (teacher, 1-bit student, every output): later runs of the same command only redo the
    finish, from the student's last checkpoint."""
    folder = tmp_path_factory.mktemp("finish")
    base = folder / "base"
    save_tiny_teacher(base, layers=2)
    train, dev = news_csv(folder)
    config = json.loads((REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json").read_text())
    del config["train_micro_batch_size_per_gpu"]  # the batch comes from the flag
    (folder / "ds.json").write_text(json.dumps(config))
    flags = [
        *("--deepspeed_config", str(folder / "ds.json"), "--model_name_or_path", str(base)),
        *("--train_file", train, "--validation_file", dev, "--test_file", dev, "--do_predict"),
        *("--output_dir", str(folder / "run"), "--max_seq_length", "16", "--per_device_train_batch_size", "32"),
        *("--teacher_max_train_steps", "2", "--max_train_steps", "2", "--augment", "0"),
    ]
    results = run.main(flags)
    assert "failed_steps" not in results and (folder / "run" / "predictions.tsv").is_file()
    return folder / "run", flags


def _cli(flags, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["launch/train.py", *flags])
    with pytest.raises(SystemExit) as exit_info:
        run.cli()
    return exit_info.value.code


def _broken(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "target, what, redo, kept",
    [
        ("export_onnx", "onnx/", "python -m xtc_ds.export --format onnx --model", ["final_dev", "packed_dev"]),
        (
            "write_predictions",
            "predictions.tsv",
            "python launch/train.py --eval_packed",
            ["final_dev", "packed_dev", "onnx_dev"],
        ),
        ("export_packed", "packed/", "the same launch/train.py command", ["final_dev"]),
        ("replace_dir_atomic", "final/", "the same launch/train.py command", []),
        ("write_report", "report.md", "python launch/report.py", ["final_dev", "packed_dev", "onnx_dev"]),
    ],
)
def test_a_late_step_that_fails_keeps_the_results_and_names_the_fix(
    trained, monkeypatch, capsys, target, what, redo, kept
):
    out, flags = trained
    monkeypatch.setattr(finish_module, target, _broken(OSError(28, "No space left on device")))
    assert _cli(flags, monkeypatch) == finish_module.EXIT_LATE_FAILURE
    err = capsys.readouterr().err
    assert f"error: {what} failed (OSError: [Errno 28] No space left on device); redo it with: {redo}" in err
    results = json.loads((out / "eval_results.json").read_text())
    assert results["student_best"]["steps"] == 2 and results["teacher_dev"]  # training results are on disk
    assert [key for key in ("final_dev", "packed_dev", "onnx_dev") if key in results] == kept
    assert len(results["failed_steps"]) == 1 and what in results["failed_steps"][0]


def test_without_the_onnx_packages_the_plan_says_so_and_the_run_ends_well(trained, monkeypatch, capsys):
    out, flags = trained
    monkeypatch.setattr(finish_module, "missing_onnx_packages", lambda: ["onnxscript"])
    monkeypatch.setattr(finish_module, "export_onnx", _broken(AssertionError("the export was attempted")))
    monkeypatch.setattr(sys, "argv", ["launch/train.py", *flags])
    run.cli()  # returns: exit code 0
    err = capsys.readouterr().err
    assert "outputs: final/, packed/, predictions.tsv, eval_results.json, report.md; no onnx/ (onnxscript not" in err
    results = json.loads((out / "eval_results.json").read_text())
    assert "onnx_dev" not in results and "failed_steps" not in results and results["packed_dev"]


def test_the_last_screen_is_the_summary_without_exporter_chatter(trained):
    """Run again (it continues from the checkpoints and redoes the finish, ONNX export included), as a user would:
    the console ends with the summary, whose numbers are those of eval_results.json, and shows none of the
    exporter's pass-by-pass INFO lines or warnings."""
    import subprocess

    from conftest import job_env

    out, flags = trained
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *flags],
        env=job_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for chatter in ("onnx_ir", "onnxscript", "torchvision", "UserWarning", "FutureWarning", "training mode"):
        assert chatter not in console, chatter
    screen = result.stderr[result.stderr.index("xtc_ds: done.") :].splitlines()
    results = json.loads((out / "eval_results.json").read_text())
    assert len(screen) < 30
    for key, name in (("teacher_dev", "teacher"), ("packed_dev", "packed (packed/)"), ("onnx_dev", "ONNX Runtime")):
        accuracy = f"accuracy {100 * results[key]['dev']['accuracy']:.2f}"
        assert any(line.strip().startswith(name) and accuracy in line for line in screen), (name, screen)
    assert any("x smaller" in line for line in screen) and any("load_packed" in line for line in screen)
    assert f"predictions.tsv: {out / 'predictions.tsv'}" in result.stderr


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path  # a PNG file
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_report_holds_the_results_and_its_pictures(trained, monkeypatch):
    from xtc_ds.recipes.classification import report

    out, _ = trained
    text = (out / "report.md").read_text()
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("teacher_dev", "final_dev", "packed_dev", "onnx_dev"):
        assert f"accuracy {100 * results[key]['dev']['accuracy']:.2f}" in text, key
    for picture in ("accuracy_size", "curves", "bits"):
        assert f"(report/{picture}.png)" in text and _png_size(out / "report" / f"{picture}.png") == (640, 400)
    other = out.parent / "other"  # a second run in the comparison: the same folder's files, another name
    other.mkdir(exist_ok=True)
    for name in ("eval_results.json", "args.json"):
        (other / name).write_text((out / name).read_text())
    report.write_report(out, compare=[other])
    assert _png_size(out / "report" / "accuracy_size.png") == (640, 400)

    monkeypatch.setattr(report, "pictures_available", lambda: False)
    text = report.write_report(out).read_text()
    assert "No pictures: matplotlib is not installed (pip install 'xtc_ds[report]')" in text and "![" not in text
    assert f"accuracy {100 * results['packed_dev']['dev']['accuracy']:.2f}" in text
