"""``report.md`` of a finished run, with the pictures people would rather look at than read: accuracy against size
(teacher, student, packed, ONNX; and other runs given to compare), the training curves (loss and dev score per
phase) and the weight bits of each quantization group over the student's steps.

Pictures need matplotlib (the ``[report]`` extra); without it the report is the text alone and says so.
``python launch/report.py RUN_DIR [--compare RUN_DIR ...]`` renders it again, e.g. to put a 2-bit, a 1-bit and a
3-layer 1-bit run in one accuracy-against-size picture.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from xtc_ds.config import load_compression_config
from xtc_ds.errors import DataError, exit_on_user_error
from xtc_ds.files import read_json, read_jsonl, write_text_atomic
from xtc_ds.recipes.classification.summary import MODELS, primary_metric, summary
from xtc_ds.saved_state import COMPRESSION_FILE
from xtc_ds.schedule import scheduled_bits

__all__ = ["REPORT_FILE", "PICTURES_DIR", "pictures_available", "write_report", "main"]

REPORT_FILE = "report.md"
PICTURES_DIR = "report"
_SIZE = (6.4, 4.0)  # inches at 100 dpi: 640 x 400 pixels
_DPI = 100


def _results(run: Path) -> dict[str, Any]:
    path = run / "eval_results.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (not a finished launch/train.py run)")
    return read_json(path)


def _points(run: Path, results: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(model, size in MB, primary dev metric)`` of each model the run scored and stored."""
    points = []
    for key, name, weights, _ in MODELS:
        path = _teacher_weights(run) if weights is None else run / weights
        if key in results and path is not None and path.is_file():
            points.append((name, path.stat().st_size / 1e6, primary_metric(results[key])[1]))
    return points


def _teacher_weights(run: Path) -> Optional[Path]:
    fine_tuned = run / "teacher" / "best" / "model.safetensors"
    if fine_tuned.is_file():
        return fine_tuned
    teacher = read_json(run / "args.json").get("teacher_model") if (run / "args.json").is_file() else None
    return Path(teacher) / "model.safetensors" if teacher else None


def _accuracy_size(plt: Any, runs: Sequence[Path], path: Path) -> None:
    from matplotlib import ticker

    figure, axes = plt.subplots(figsize=_SIZE)
    for run in runs:
        results = _results(run)
        points = _points(run, results)
        axes.scatter([p[1] for p in points], [p[2] for p in points], label=run.name)
        for i, (name, size, score) in enumerate(points):  # every other label below its point: neighbours overlap
            offset = (4, 4) if i % 2 == 0 else (4, -11)
            axes.annotate(name.split(" ")[0], (size, score), textcoords="offset points", xytext=offset, fontsize=8)
        metric = primary_metric(results["teacher_dev"])[0] if "teacher_dev" in results else "score"
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, 50 MB ...
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("size on disk (MB, log scale)")
    axes.set_ylabel(f"dev {metric}")
    axes.set_title("accuracy against size")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def _curves(plt: Any, run: Path, path: Path) -> None:
    figure, (losses, scores) = plt.subplots(1, 2, figsize=_SIZE)
    for phase in ("teacher", "student"):
        log = read_jsonl(run / phase / "train_log.jsonl")
        steps = [r for r in log if "loss" in r]
        evals = [r for r in log if "score" in r]
        if steps:
            losses.plot([r["step"] for r in steps], [r["loss"] for r in steps], label=phase, linewidth=0.8)
        if evals:
            scores.plot([r["step"] for r in evals], [r["score"] for r in evals], "o-", label=phase, markersize=3)
    losses.set(xlabel="step", ylabel="training loss", title="loss")
    scores.set(xlabel="step", ylabel="dev score", title="dev score")
    for axes in (losses, scores):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def _bits(plt: Any, run: Path, results: dict[str, Any], path: Path) -> bool:
    """Weight bits of each group over the student's steps (from the config the student was trained with)."""
    saved = run / "student" / "best" / COMPRESSION_FILE
    steps = results.get("student_best", {}).get("steps")
    if not saved.is_file() or not steps:
        return False
    weights = load_compression_config(read_json(saved)).weight_quantization
    if not weights.enabled:
        return False
    figure, axes = plt.subplots(figsize=_SIZE)
    offset = weights.shared_parameters.schedule_offset
    xs = list(range(0, steps + 1, max(1, steps // 400)))
    for name, group in weights.different_groups.items():
        bits = [32 if s < offset else scheduled_bits(group.params, s - offset)[0] for s in xs]
        axes.step(xs, bits, where="post", label=name)
    axes.set(xlabel="student step", ylabel="weight bits (32: not yet quantized)", title="bit schedule")
    axes.set_yscale("log", base=2)
    axes.set_yticks([1, 2, 4, 8, 16, 32], labels=["1", "2", "4", "8", "16", "32"])
    axes.set_ylim(0.8, 40)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return True


def pictures_available() -> bool:
    """Whether matplotlib (the ``[report]`` extra) can be imported, checked without importing it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Optional[Any]:
    if not pictures_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(run: Path, compare: Sequence[Path] = ()) -> Path:
    """Write ``run/report.md`` (and its pictures in ``run/report/``); returns the report's path.

    Raises:
        DataError: ``run`` (or a run to compare) is not a finished run.
    """
    run = Path(run)
    results = _results(run)
    teacher = _teacher_weights(run)
    table = summary(results, run, teacher.parent if teacher else run)
    text = [f"# {results.get('task', run.name)}: {run}", "", "```", table, "```", ""]
    plt = _pyplot()
    if plt is None:
        text.append("No pictures: matplotlib is not installed (pip install 'xtc_ds[report]').")
    else:
        pictures = run / PICTURES_DIR
        pictures.mkdir(exist_ok=True)
        _accuracy_size(plt, [run, *map(Path, compare)], pictures / "accuracy_size.png")
        text += ["![accuracy against size](report/accuracy_size.png)", ""]
        _curves(plt, run, pictures / "curves.png")
        text += ["![training curves](report/curves.png)", ""]
        if _bits(plt, run, results, pictures / "bits.png"):
            text += ["![bit schedule](report/bits.png)", ""]
    path = run / REPORT_FILE
    write_text_atomic(path, "\n".join(text) + "\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python launch/report.py RUN_DIR [--compare RUN_DIR ...]``: render a finished run's report again."""
    parser = argparse.ArgumentParser(prog="python launch/report.py", description=main.__doc__)
    parser.add_argument("run", type=Path, help="the --output_dir of a finished launch/train.py run")
    parser.add_argument("--compare", type=Path, nargs="*", default=(), help="other runs in the accuracy-size picture")
    args = parser.parse_args(argv)
    print(exit_on_user_error(lambda: write_report(args.run, args.compare)))
