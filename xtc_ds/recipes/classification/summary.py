"""The last screen of a run: each model's dev score, its size on disk against the teacher's, the time per phase,
the disk the checkpoints take, and where each artefact is with one line on how to use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from xtc_ds.recipes.classification.predictions import PREDICTIONS_FILE

__all__ = ["MODELS", "summary", "primary_metric"]

MODELS = (  # result key, name, weights file (relative to the output folder), whether it is stored compressed
    ("teacher_dev", "teacher", None, False),
    ("final_dev", "student (final/)", "final/model.safetensors", False),  # quantized values in float32 tensors
    ("packed_dev", "packed (packed/)", "packed/model.safetensors", True),
    ("onnx_dev", "ONNX Runtime (onnx/)", "onnx/model.onnx", True),
)


def _megabytes(size: Optional[int]) -> str:
    return "" if size is None else f"{size / 1e6:.1f} MB"


def _size(path: Path) -> Optional[int]:
    return path.stat().st_size if path.is_file() else None


def _tree_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def primary_metric(metrics: dict[str, Any]) -> tuple[str, float]:
    """The first metric of the first dev split: accuracy, Matthews or Pearson correlation by task."""
    name, value = next(iter(next(iter(metrics.values())).items()))
    return name, value


def _scores(metrics: dict[str, Any]) -> str:
    split = next(iter(metrics.values()))  # the (first) dev split
    return ", ".join(f"{name} {100 * value:.2f}" for name, value in split.items())


def _minutes(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def summary(results: dict[str, Any], out: Path, teacher_dir: Path) -> str:
    """The run's summary as printed at its end (``results`` as written to ``eval_results.json``)."""
    teacher_size = _size(teacher_dir / "model.safetensors")
    rows = [("model", "dev", "size", "vs teacher")]
    for key, name, weights, compressed in MODELS:
        if key not in results:
            continue
        size = teacher_size if weights is None else _size(out / weights)
        ratio = f"{teacher_size / size:.1f}x smaller" if size and teacher_size and compressed else ""
        rows.append((name, _scores(results[key]), _megabytes(size), ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["xtc_ds: done. Dev scores (%), sizes on disk:"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    times = [
        ("augmentation", results.get("augmentation", {}).get("seconds")),
        ("teacher", results.get("teacher_training", {}).get("wall_time_s")),
        ("student", results.get("student_best", {}).get("wall_time_s")),
        ("whole run", results.get("wall_time_s")),
    ]
    lines.append("  time: " + ", ".join(f"{name} {_minutes(s)}" for name, s in times if s is not None))
    checkpoints = sum(_tree_size(out / phase / "checkpoints") for phase in ("teacher", "student"))
    if checkpoints:
        lines.append(
            f"  disk: {checkpoints / 1e9:.2f} GB of resumable checkpoints in teacher/ and student/checkpoints "
            "(delete them once the run is final)"
        )
    lines.append(f"  results: {out / 'eval_results.json'}")
    if (out / "packed").is_dir():
        lines.append(f'  packed/: model = xtc_ds.load_packed("{out / "packed"}"); tokenizer in the same folder')
    if (out / "onnx").is_dir():
        onnx = out / "onnx" / "model.onnx"
        lines.append(f'  onnx/: onnxruntime.InferenceSession("{onnx}") or xtc_ds.onnx_export.OnnxClassifier')
    if "predictions" in results:
        lines.append(f"  {PREDICTIONS_FILE}: {results['predictions']} (index, predicted label)")
    for failure in results.get("failed_steps", []):
        lines.append(f"  FAILED {failure}")
    return "\n".join(lines)
