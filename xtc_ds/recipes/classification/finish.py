"""The finish of a run, after training: the cleaned student (``final/``), its packed export (``packed/``), the ONNX
Runtime export (``onnx/``) and predictions, each scored on the dev set.

Training is the expensive part and its results are on disk before any of this starts (``eval_results.json``). Each
step here is attempted on its own: one that fails (a full disk, a missing package, an exporter error) is reported
as a warning with the command that redoes it, the results made so far stay on disk, and the run ends with
:data:`EXIT_LATE_FAILURE` instead of 0. Which optional outputs a run makes is decided and said before it starts
(:func:`plan_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from xtc_ds._log import logger
from xtc_ds.compress import init_compression, redundancy_clean
from xtc_ds.config import SECTION, CompressionConfig
from xtc_ds.export import export_packed, load_packed
from xtc_ds.files import replace_dir_atomic, write_json_atomic
from xtc_ds.onnx_export import OnnxClassifier, export_onnx, missing_onnx_packages
from xtc_ds.recipes.classification.models import load_model
from xtc_ds.recipes.classification.predictions import PREDICTIONS_FILE, write_predictions
from xtc_ds.recipes.classification.report import REPORT_FILE, pictures_available, write_report
from xtc_ds.recipes.classification.settings import RunConfig
from xtc_ds.recipes.classification.trainer import evaluate
from xtc_ds.saved_state import COMPRESSION_FILE, load_compression_state
from xtc_ds.schedule import CompressionScheduler

__all__ = ["EXIT_LATE_FAILURE", "Outputs", "plan_outputs", "finish", "write_run_report"]

EXIT_LATE_FAILURE = 3
"""Exit status of a run whose training results are written but a step after training failed (each is named, with
the command that redoes it). 0 is a complete run, 2 a user error found before or during training."""


@dataclass(frozen=True)
class Outputs:
    """The optional outputs of a run, decided before it starts.

    Attributes:
        onnx: export ``onnx/`` and score it with ONNX Runtime.
        onnx_reason: why not, when ``onnx`` is False.
        predictions: write ``predictions.tsv`` for the test rows.
        pictures: ``report.md`` has pictures (matplotlib is installed).
    """

    onnx: bool
    onnx_reason: str
    predictions: bool
    pictures: bool

    def line(self) -> str:
        """The plan's line on what the run will write."""
        made = [
            "final/",
            "packed/",
            *(["onnx/"] if self.onnx else []),
            *([PREDICTIONS_FILE] if self.predictions else []),
        ]
        line = f"  outputs: {', '.join(made)}, eval_results.json, {REPORT_FILE}"
        if not self.pictures:
            line += " (text only: matplotlib not installed, pip install 'xtc_ds[report]')"
        return line if self.onnx else f"{line}; no onnx/ ({self.onnx_reason})"


def plan_outputs(predictions: bool) -> Outputs:
    """ONNX export where the ``[onnx]`` extra is importable; predictions where test rows were given."""
    missing = missing_onnx_packages()
    reason = f"{' and '.join(missing)} not installed: pip install 'xtc_ds[onnx]'" if missing else ""
    return Outputs(onnx=not missing, onnx_reason=reason, predictions=predictions, pictures=pictures_available())


def _cleaned(run: RunConfig, compression: CompressionConfig, data: dict[str, Any], tokenizer: Any, eager: bool):
    """The best student with its quantized weights baked (``redundancy_clean``), scored and saved to ``final/``."""
    best_dir = run.output_dir / "student" / "best"
    model = load_model(str(best_dir), run.task, eager=eager)
    init_compression(model, compression)
    load_compression_state(best_dir, CompressionScheduler(model))
    redundancy_clean(model, compression)
    metrics = _score(model, data, run)

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json_atomic(folder / COMPRESSION_FILE, {SECTION: compression.to_dict()})

    replace_dir_atomic(run.output_dir / "final", fill)
    return model, metrics


def _score(model: Any, data: dict[str, Any], run: RunConfig) -> dict[str, Any]:
    return evaluate(model, data["dev"], run.task, run.evaluation.batch_size, run.evaluation.pad_to_max_length)


def finish(
    run: RunConfig,
    compression: CompressionConfig,
    data: dict[str, Any],
    tokenizer: Any,
    outputs: Outputs,
    eager: bool,
    save: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any], list[str]]:
    """Clean, save, export, score and predict, each step on its own; ``save(results)`` after every step.

    Returns:
        The results of the steps that worked (``final_dev``, ``packed_dev``, ``onnx_dev``, ``predictions``) and one
        line per step that failed, naming the command that redoes it.
    """
    out = run.output_dir
    results: dict[str, Any] = {}
    failed: list[str] = []
    rerun = "the same launch/train.py command (it continues from the student's checkpoints)"

    def attempt(what: str, redo: str, step: Callable[[], Optional[dict[str, Any]]]) -> bool:
        try:
            results.update(step() or {})
            return True
        except Exception as err:  # a late step may fail on anything the environment does; the run's results stay
            line = f"{what} failed ({type(err).__name__}: {err}); redo it with: {redo}"
            logger.warning("xtc_ds: %s", line)
            failed.append(line)
            return False
        finally:
            save(results)

    made: dict[str, Any] = {}

    def cleaned() -> dict[str, Any]:
        made["model"], metrics = _cleaned(run, compression, data, tokenizer, eager)
        return {"final_dev": metrics}

    def packed() -> dict[str, Any]:
        made["packed_dir"] = export_packed(
            made["model"], compression, out / "packed", tokenizer, dtype=run.packed_dtype
        )
        made["packed"] = load_packed(made["packed_dir"])
        return {"packed_dev": _score(made["packed"], data, run)}

    def onnx() -> dict[str, Any]:
        return {"onnx_dev": _score(OnnxClassifier(export_onnx(made["packed_dir"], out / "onnx")), data, run)}

    def predictions() -> dict[str, Any]:
        path = write_predictions(
            made["packed"], data["test"], run.task, out, run.evaluation.batch_size, run.evaluation.pad_to_max_length
        )
        return {"predictions": str(path)}

    if attempt("final/", rerun, cleaned):
        if attempt("packed/", rerun, packed):
            if outputs.onnx:
                redo = f"python -m xtc_ds.export --format onnx --model {out / 'packed'} --output_dir {out / 'onnx'}"
                attempt("onnx/", redo, onnx)
            if outputs.predictions:
                redo = f"python launch/train.py --eval_packed {out / 'packed'} --do_predict --output_dir {out} and "
                attempt(PREDICTIONS_FILE, redo + "this run's data flags", predictions)
    return results, failed


def write_run_report(out: Path, failed: list[str]) -> list[str]:
    """``report.md`` of the finished run, from its results on disk; returns ``failed`` with the report's failure
    added, if it fails."""
    try:
        write_report(out)
        return failed
    except Exception as err:  # the report is the last step: nothing it needs is lost when it fails
        line = f"{REPORT_FILE} failed ({type(err).__name__}: {err}); redo it with: python launch/report.py {out}"
        logger.warning("xtc_ds: %s", line)
        return [*failed, line]
