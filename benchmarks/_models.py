"""Models shared by the packed-format benchmarks: the real MiniLM and a BERT-base-shaped random model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from xtc_ds.recipes.classification.models import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from configs import section  # noqa: E402  (the shipped recipes, shared with the tests)


def compression_config(bits: int, pooler: bool = False) -> dict[str, Any]:
    """XTC's recipe (``ds_configs/ds_xtc_1bit.json``) at ``bits``-bit weights, without KD (nothing is trained).

    ``pooler`` adds the pooler's Linear (the largest remaining fp32 tensor of a BERT-base student).
    """
    extra = ("pooler.dense",) if pooler else ()
    return {"compression_training": section(bits=bits, kd=False, extra_modules=extra)}


def minilm() -> torch.nn.Module:
    """all-MiniLM-L6-v2 (6 layers, hidden 384) with a 2-label head."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2).eval()


def bert_base(layers: int = 12) -> torch.nn.Module:
    """A random-init BERT-base-shaped classifier (hidden 768, 12 heads, vocab 30522)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=layers, num_labels=2)
    return BertForSequenceClassification(config).eval()


def half_depth_student(teacher: torch.nn.Module) -> torch.nn.Module:
    """XTC's layer reduction: every other teacher layer (1, 3, 5, ...) in a student of half the depth."""
    from xtc_ds import build_student

    depth = teacher.config.num_hidden_layers
    reduction = {
        "layer_reduction": {
            "enabled": True,
            "keep_number_layer": depth // 2,
            "module_name_prefix": "bert.encoder.layer",
            "teacher_layer": list(range(1, depth, 2)),
            "other_module_name": ["bert.pooler", "bert.embeddings", "classifier"],
        }
    }
    return build_student(copy.deepcopy(teacher), reduction).eval()


def compressed(model: torch.nn.Module, bits: int, pooler: bool = False) -> torch.nn.Module:
    """``model`` with XTC's ``bits``-bit weight / 8-bit activation fake quantization on (no training)."""
    from xtc_ds import CompressionScheduler, init_compression

    model = copy.deepcopy(model)
    init_compression(model, compression_config(bits, pooler))
    CompressionScheduler(model).step()
    return model.eval()
