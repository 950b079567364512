"""Models shared by the packed-format benchmarks: the real MiniLM and a BERT-base-shaped random model."""

from __future__ import annotations

import copy
from typing import Any

import torch

from xtc_ds.pipeline.run import default_model_path


def _quant_section(bits: int, pooler: bool) -> dict[str, Any]:
    """XTC's recipe: ``bits``-bit weights on every encoder Linear and the word embeddings, 8-bit activations.

    ``pooler`` adds the pooler's Linear (the largest remaining fp32 tensor of a BERT-base student).
    """
    modules = ["attention.self", "attention.output.dense", "intermediate", "output.dense"]
    if pooler:
        modules.append("pooler.dense")
    return {
        "weight_quantization": {
            "shared_parameters": {"enabled": True, "schedule_offset": 0},
            "different_groups": {
                "wq1": {"params": {"start_bits": bits, "target_bits": bits}, "modules": [*modules, "word_embeddings"]}
            },
        },
        "activation_quantization": {
            "shared_parameters": {"enabled": True, "schedule_offset": 0},
            "different_groups": {"aq1": {"params": {"bits": 8}, "modules": modules}},
        },
    }


def compression_config(bits: int, pooler: bool = False) -> dict[str, Any]:
    return {"compression_training": _quant_section(bits, pooler)}


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
