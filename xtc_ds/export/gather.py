"""Where exported weights come from: a live model (ZeRO-3 partitions gathered), a Hugging Face folder, or a
DeepSpeed checkpoint read without unpickling anything but weights; and which compression config applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from xtc_ds.checkpoints import checkpoint_tag_dir
from xtc_ds.config import CompressionConfig, ConfigError, load_compression_config
from xtc_ds.errors import CheckpointError, ModelError, PackedFormatError, XtcError
from xtc_ds.export.format import WEIGHTS_FILE
from xtc_ds.export.load import load_cleaned
from xtc_ds.files import require_model_folder
from xtc_ds.safe_load import check_pickle, load_weights
from xtc_ds.state import compression_state, require_same_config, unwrap_model

__all__ = [
    "partitioned_parameters",
    "gathered_state",
    "checkpoint_state_dict",
    "checked_checkpoint",
    "source_model",
    "export_config",
]


def partitioned_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the model's parameters and buffers (persistent or not); gathers ZeRO-3 partitions.

    Under ZeRO-3 every rank must call this (the gather is collective).
    """
    params = partitioned_parameters(model)
    if params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return _gathered_state_unpartitioned(model)
    return _gathered_state_unpartitioned(model)


def _gathered_state_unpartitioned(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    for name, buffer in model.named_buffers():
        state.setdefault(name, buffer.detach().cpu().clone())
    return state


def checkpoint_state_dict(checkpoint: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Full model weights saved by ``engine.save_checkpoint``, on CPU.

    Args:
        checkpoint: the save directory (its ``latest`` file names the tag) or one tag folder (``global_stepN``).
            ZeRO 1–3 checkpoints are consolidated from the optimizer's fp32 partitions (DeepSpeed's
            ``zero_to_fp32``, after :func:`~xtc_ds.safe_load.check_pickle` has cleared every file); stage 0 ones
            are read from the model states file with ``weights_only=True``.
    Raises:
        CheckpointError: naming the file that is missing, damaged or holds anything but weights.
    """
    checkpoint = Path(checkpoint)
    tag_dir = checkpoint_tag_dir(checkpoint)
    if not tag_dir.is_dir() or not any(tag_dir.glob("*model_states.pt")):
        raise CheckpointError(f"{checkpoint}: not a DeepSpeed checkpoint (no *model_states.pt in {tag_dir})")
    if not any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        states = load_weights(tag_dir / "mp_rank_00_model_states.pt")
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise CheckpointError(f"{tag_dir / 'mp_rank_00_model_states.pt'}: holds no 'module' state dict")
        return states["module"]
    for path in sorted(tag_dir.glob("*.pt")):
        check_pickle(path)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
    except Exception as err:  # DeepSpeed's consolidation fails in many ways on incomplete checkpoints
        raise CheckpointError(f"{tag_dir}: DeepSpeed cannot consolidate it ({type(err).__name__}: {err})") from None


def source_model(source: Any) -> nn.Module:
    if isinstance(source, (str, Path)):
        return _load_hf(Path(source))
    return unwrap_model(source)


def export_config(root: nn.Module, deepspeed_config: Any) -> CompressionConfig:
    """The config the model was compressed with (a config handed in must agree), else the one handed in."""
    state = compression_state(root)
    given = None if deepspeed_config is None else load_compression_config(deepspeed_config)
    if state is None:
        if given is None:
            raise ConfigError(
                "export_packed: the model carries no compression state (a plain or reloaded model): pass the "
                "deepspeed_config it was trained with"
            )
        return given
    if given is not None:
        require_same_config(state, given, "export_packed")
    return state.config


def _load_hf(folder: Path) -> nn.Module:
    """The model of a Hugging Face folder; one saved as ``model.safetensors`` through :func:`load_cleaned`, which also
    reads a cleaned model that pruning made smaller than its config (``from_pretrained`` refuses those)."""
    import transformers

    require_model_folder(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return load_cleaned(folder, strict=False)
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        architecture = (config.architectures or [None])[0]
        cls = getattr(transformers, architecture, None) if architecture else None
        if cls is None:
            raise ModelError(f"{folder / 'config.json'}: unknown architectures {config.architectures}")
        return cls.from_pretrained(folder)
    except XtcError:
        raise
    except Exception as err:  # transformers and safetensors raise many types for a corrupt folder
        raise ModelError(f"{folder}: cannot load the model ({type(err).__name__}: {err})") from err


def checked_checkpoint(checkpoint: Union[str, Path], model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's weights, which must cover every persistent tensor of ``model`` with the same shapes."""
    saved = checkpoint_state_dict(checkpoint)
    for name, tensor in model.state_dict().items():
        shape = tuple(getattr(tensor, "ds_shape", tensor.shape))
        if name not in saved:
            raise PackedFormatError(f"{checkpoint}: tensor '{name}' of the model is not in the checkpoint")
        if tuple(saved[name].shape) != shape:
            raise PackedFormatError(
                f"{checkpoint}: tensor '{name}' has shape {tuple(saved[name].shape)}, the model {shape}"
            )
    return {
        name: tensor.detach().cpu().float() if tensor.is_floating_point() else tensor for name, tensor in saved.items()
    }
