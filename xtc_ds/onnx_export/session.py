"""OnnxClassifier: an exported ONNX folder run by ONNX Runtime, called like a ``transformers`` classifier, so the
same evaluation and prediction code serves the PyTorch, packed and ONNX models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from transformers import AutoConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from xtc_ds.errors import OnnxExportError
from xtc_ds.onnx_export.export import ONNX_FILE, RECORD_FILE

__all__ = ["OnnxClassifier", "onnxruntime_available", "missing_onnx_packages"]


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` (the ``[onnx]`` extra) can be imported."""
    return not missing_onnx_packages(("onnxruntime",))


def missing_onnx_packages(needed: tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime")) -> list[str]:
    """Which of the ``[onnx]`` extra's packages cannot be imported: exporting needs ``onnx`` and ``onnxscript``,
    running the export ``onnxruntime``. Checked without importing them, before a run starts."""
    import importlib.util

    return [name for name in needed if importlib.util.find_spec(name) is None]


class OnnxClassifier(nn.Module):
    """``model(input_ids=..., attention_mask=..., token_type_ids=...).logits`` from an ONNX Runtime session.

    Args:
        folder: written by :func:`xtc_ds.export_onnx`.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``, as PyTorch uses).
    Raises:
        OnnxExportError: naming the folder when it is not an ONNX export, or when ``onnxruntime`` is missing or
            cannot load ``model.onnx``.
    """

    def __init__(self, folder: Union[str, Path], threads: Optional[int] = None) -> None:
        super().__init__()
        folder = Path(folder)
        if not (folder / RECORD_FILE).is_file() or not (folder / ONNX_FILE).is_file():
            raise OnnxExportError(f"{folder}: not an ONNX export (no {RECORD_FILE} and {ONNX_FILE}); see export_onnx")
        if not onnxruntime_available():
            raise OnnxExportError(f"{folder}: running it needs onnxruntime; pip install 'xtc_ds[onnx]'")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own error types for unreadable or invalid models
            raise OnnxExportError(f"{folder / ONNX_FILE}: ONNX Runtime cannot load it ({err})") from None
        self.record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        self.config = AutoConfig.from_pretrained(folder)
        self.input_names = [arg.name for arg in self.session.get_inputs()]
        self.device = torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        inputs["input_ids"] = input_ids
        defaults = {"attention_mask": torch.ones_like(input_ids), "token_type_ids": torch.zeros_like(input_ids)}
        feed = {name: inputs.get(name, defaults.get(name)).cpu().numpy() for name in self.input_names}
        return SequenceClassifierOutput(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))
