"""export_packed() and load_packed(): compressed models as truly packed Hugging Face folders.

An exported folder holds ``config.json`` (the model's config plus a ``quantization_config`` block),
``model.safetensors`` and the tokenizer files. Each quantized module is stored as ``<name>.packed_weight``
(uint8 codes in the :mod:`xtc_ds.quant.packing` layout: 8 per byte at 1 bit, 4 at 2 bits, 2 at 3..4 bits,
1 at 5..8 bits), ``<name>.weight_scale`` (float32, one per group), ``<name>.weight_zero_point`` for asymmetric
weights and ``<name>.bias``; everything else keeps its name, in float32 or float16. The block records
``format_version``, the layout, the compression config, one :class:`~xtc_ds.nn.PackedSpec` per module and
the checksums :mod:`xtc_ds.packed_format` verifies.

``python -m xtc_ds.export --model DIR --deepspeed_config FILE --output_dir DIR [--checkpoint CKPT]`` does the
same from a Hugging Face folder (and, with ``--checkpoint``, the weights of a DeepSpeed training checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from xtc_ds.config import CompressionConfig, ConfigError, QuantizationType, RangeCalibration, load_compression_config
from xtc_ds.errors import CheckpointError, ModelError, OutputDirError, PackedFormatError, XtcError, exit_on_user_error
from xtc_ds.inject import to_packed
from xtc_ds.matching import plan_injection, weight_shape
from xtc_ds.nn.packed_linear import packed_weight_tensors
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.nn.qat_linear import conv1d_type
from xtc_ds.packed_format import (
    FORMAT_VERSION,
    LAYOUT,
    QUANT_METHOD,
    WEIGHTS_FILE,
    config_sha256,
    read_quantization_config,
    read_tensors,
    tensor_sha256,
    verify_config_checksum,
    verify_tensor_checksums,
)
from xtc_ds.pipeline.checkpoints import checkpoint_tag_dir
from xtc_ds.pipeline.io import path_within, replace_dir_atomic, require_model_folder
from xtc_ds.safe_load import check_pickle, load_weights
from xtc_ds.state import compression_state, require_same_config, unwrap_model

__all__ = [
    "export_packed",
    "load_packed",
    "packed_specs",
    "checkpoint_state_dict",
    "PackedFormatError",
    "FORMAT_VERSION",
    "QUANT_METHOD",
]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def packed_specs(model: nn.Module, deepspeed_config: Any) -> dict[str, PackedSpec]:
    """Module name -> :class:`PackedSpec` for every module the config compresses (final ``target_bits``).

    Works on a plain model, an injected QAT model or a ``redundancy_clean``ed one: the config decides.
    """
    config = load_compression_config(deepspeed_config)
    wq, aq = config.weight_quantization, config.activation_quantization
    modules = dict(model.named_modules())
    conv1d = conv1d_type()
    specs = {}
    for name, plan in plan_injection(model, config).items():
        module = modules[name]
        out_features, in_features = weight_shape(module)
        if isinstance(module, nn.Embedding):
            kind = "embedding"
        else:
            kind = "conv1d" if conv1d is not None and isinstance(module, conv1d) else "linear"
        spec: dict[str, Any] = {"kind": kind, "out_features": out_features, "in_features": in_features}
        spec["bias"] = getattr(module, "bias", None) is not None
        if kind == "embedding":
            spec["padding_idx"] = module.padding_idx
        if plan.weight_group is not None:
            spec["bits"] = wq.different_groups[plan.weight_group].params.target_bits
            spec["group"] = plan.weight_group
            spec["num_groups"] = out_features if plan.num_groups is None else plan.num_groups
            spec["symmetric"] = wq.shared_parameters.quantization_type is QuantizationType.SYMMETRIC
        if plan.act_group is not None:
            spec["act_bits"] = aq.different_groups[plan.act_group].params.bits
            spec["act_symmetric"] = aq.shared_parameters.quantization_type is QuantizationType.SYMMETRIC
            spec["act_static"] = aq.shared_parameters.range_calibration is RangeCalibration.STATIC
        specs[name] = PackedSpec(**spec)
    return specs


def _partitioned_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def _gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the model's parameters and buffers (persistent or not); gathers ZeRO-3 partitions.

    Under ZeRO-3 every rank must call this (the gather is collective).
    """
    params = _partitioned_parameters(model)
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


def _static_ranges(model: nn.Module, specs: dict[str, PackedSpec]) -> dict[str, torch.Tensor]:
    """``<name>.act_range`` of every statically calibrated module; raises if a range was never calibrated."""
    ranges = {}
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if not spec.act_static:
            continue
        quantizer = getattr(modules[name], "act_quantizer", None)
        if quantizer is None or not bool(quantizer.calibrated):
            raise ValueError(
                f"export_packed: '{name}' uses a static activation range that this model does not hold; export the "
                "trained model object (its activation quantizers carry the calibrated ranges)"
            )
        ranges[f"{name}.act_range"] = torch.stack([quantizer.x_min, quantizer.x_max]).float().cpu()
    return ranges


def _source_model(source: Any) -> nn.Module:
    if isinstance(source, (str, Path)):
        return _load_hf(Path(source))
    return unwrap_model(source)


def _export_config(root: nn.Module, deepspeed_config: Any) -> CompressionConfig:
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
    import transformers

    require_model_folder(folder)
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


def _is_export(folder: Path) -> bool:
    """True for a folder an earlier :func:`export_packed` wrote (its config.json has an xtc quantization_config)."""
    try:
        block = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(block, dict) and block.get("quant_method") == QUANT_METHOD


def _check_output_dir(output_dir: Path, sources: Sequence[Any], overwrite: bool) -> None:
    """Refuse an ``output_dir`` whose replacement would delete what xtc_ds did not write.

    Raises:
        OutputDirError: ``output_dir`` is a file; is, is inside or holds a source folder; or is a non-empty
            folder that is not an earlier export (unless ``overwrite``).
    """
    for source in sources:
        if not isinstance(source, (str, Path)):
            continue
        if path_within(output_dir, Path(source)) or path_within(Path(source), output_dir):
            raise OutputDirError(
                f"output_dir {output_dir}: is, is inside or contains the source {source}, which writing the export "
                "would delete; choose another folder"
            )
    if os.path.lexists(output_dir) and not output_dir.is_dir():
        raise OutputDirError(f"output_dir {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite and not _is_export(output_dir):
        raise OutputDirError(
            f"output_dir {output_dir}: not empty and not an earlier xtc_ds export; choose a new or empty folder, or "
            "pass overwrite=True (python -m xtc_ds.export --overwrite_output_dir) to replace everything in it"
        )


def _copy_tokenizer(tokenizer: Any, folder: Path) -> None:
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
        return
    for name in _TOKENIZER_FILES:
        if (Path(tokenizer) / name).exists():
            shutil.copy2(Path(tokenizer) / name, folder / name)


def _checked_checkpoint(checkpoint: Union[str, Path], model: nn.Module) -> dict[str, torch.Tensor]:
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


def _packed_tensors(
    state: dict[str, torch.Tensor], specs: dict[str, PackedSpec], skip: list[str], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The file's tensors: each quantized weight replaced by its packed codes and scales, the rest in ``dtype``."""
    tensors = {}
    for key, tensor in state.items():
        if key in skip:
            continue
        owner, _, leaf = key.rpartition(".")
        spec = specs.get(owner)
        if spec is not None and spec.bits is not None and leaf == "weight":
            weight = tensor.t() if spec.kind == "conv1d" else tensor
            tensors.update({f"{owner}.{name}": value for name, value in packed_weight_tensors(weight, spec).items()})
        else:
            tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors


def export_packed(
    model: Any,
    deepspeed_config: Optional[Any],
    output_dir: Union[str, Path],
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    checkpoint: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
) -> Optional[Path]:
    """Write ``model`` compressed as a packed Hugging Face folder, atomically.

    Args:
        model: a compressed model (QAT or ``redundancy_clean``ed), a DeepSpeed engine or a Hugging Face
            folder path of such a model. With ZeRO-3 partitioned weights every rank must call this: they are
            gathered, rank 0 writes, the others wait for it.
        deepspeed_config: the DeepSpeed config (path or dict) holding ``compression_training``, or None for a
            model compressed in this process (``init_compression``/``initialize``), whose own config is used.
            Given for such a model, it must equal that config (an error names every difference).
        output_dir: the folder to write: new, empty, or an earlier export, which is replaced as a whole (the new
            folder is built in one hidden sibling and renamed in; nothing else beside it is touched). It may not
            be, lie inside or contain the source model, tokenizer or checkpoint folder.
        tokenizer: a tokenizer or a folder to copy tokenizer files from (default: the model folder, if given).
        dtype: storage of the tensors that are not quantized (float32 or float16).
        checkpoint: a DeepSpeed checkpoint (``save_checkpoint`` directory or one tag folder) whose weights are
            exported instead of ``model``'s; ``model`` then only supplies the architecture (e.g. the run's
            ``student/best`` folder with ``student/checkpoints``).
        overwrite: also replace a non-empty ``output_dir`` that is not an earlier export.
    Returns:
        ``output_dir`` on rank 0, None on other ranks.
    Raises:
        OutputDirError: an ``output_dir`` that may not be replaced (checked before any work).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if tokenizer is None and isinstance(model, (str, Path)):
        tokenizer = model
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, (model, tokenizer, checkpoint), overwrite)
    root = _source_model(model)
    config = _export_config(root, deepspeed_config)
    specs = packed_specs(root, config)
    collective = bool(_partitioned_parameters(root)) and torch.distributed.is_initialized()
    state = _gathered_state(root)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        if collective:
            torch.distributed.barrier()  # wait until rank 0 has written the folder
        return None
    if checkpoint is not None:
        state.update(_checked_checkpoint(checkpoint, root))
    persistent = set(root.state_dict())
    inside_specs = tuple(f"{name}." for name in specs)  # quantizer state is replaced by the packed tensors
    buffers = sorted(name for name in set(state) - persistent if not name.startswith(inside_specs))
    state = {name: tensor for name, tensor in state.items() if name in persistent or name in buffers}
    tensors = _packed_tensors(state, specs, buffers, dtype)
    tensors.update(_static_ranges(root, specs))
    tensors.update({name: state[name] for name in buffers})
    hf_config = copy.deepcopy(root.config)
    hf_config.architectures = [type(root).__name__]
    block = {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "layout": LAYOUT,
        "dtype": str(dtype).removeprefix("torch."),
        "compression_training": config.to_dict(),
        "modules": {name: spec.to_dict() for name, spec in specs.items()},
        "non_persistent_buffers": buffers,
    }

    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    block["tensor_sha256"] = {name: tensor_sha256(tensor) for name, tensor in tensors.items()}
    config_dict = json.loads(json.dumps({**hf_config.to_dict(), "quantization_config": block}))
    config_dict["quantization_config"]["config_sha256"] = config_sha256(config_dict)

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _copy_tokenizer(tokenizer, folder)

    replace_dir_atomic(output_dir, fill)
    if collective:
        torch.distributed.barrier()
    return output_dir


def _model_class(config: dict[str, Any], path: Path) -> type:
    import transformers

    architecture = (config.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if isinstance(architecture, str) else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise PackedFormatError(f"{path}: architectures {config.get('architectures')!r} names no transformers model")
    return model_class


def _empty_model(folder: Path, model_class: type, attn_implementation: Optional[str]) -> nn.Module:
    """The architecture of ``config.json`` on the meta device (no memory, no weights)."""
    import transformers

    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder)
        if attn_implementation is not None:
            hf_config._attn_implementation = attn_implementation
        with torch.device("meta"):
            return model_class(hf_config)
    except Exception as err:  # transformers raises many types for fields it cannot build a model from
        raise PackedFormatError(f"{folder / 'config.json'}: no model can be built from it ({err})") from None


def _check_specs(model: nn.Module, block: dict[str, Any], specs: dict[str, PackedSpec], path: Path) -> None:
    """The stored module specs must be exactly what ``compression_training`` gives on this architecture."""
    try:
        derived = packed_specs(model, block["compression_training"])
    except ConfigError as err:
        raise PackedFormatError(
            f"{path}: quantization_config.compression_training does not fit the model ({err})"
        ) from None
    for name in sorted(set(specs) | set(derived)):
        if name not in derived or name not in specs:
            where = "is not a compressed module of this model" if name not in derived else "is missing"
            raise PackedFormatError(f"{path}: quantization_config.modules.{name} {where}")
        stored, wanted = specs[name].to_dict(), derived[name].to_dict()
        for field, value in stored.items():
            if value != wanted[field]:
                raise PackedFormatError(
                    f"{path}: quantization_config.modules.{name}.{field} is {value!r}, but compression_training "
                    f"and the model give {wanted[field]!r}"
                )


def _check_tensors(
    model: nn.Module, tensors: dict[str, torch.Tensor], block: dict[str, Any], specs: dict[str, PackedSpec], path: Path
) -> None:
    """Every file tensor must be one the packed model holds, with its shape and kind of dtype; none may be missing."""
    expected = dict(model.state_dict(keep_vars=True))
    buffers = dict(model.named_buffers())
    for name in block["non_persistent_buffers"]:
        if name in buffers:
            expected.setdefault(name, buffers[name])
    for name, spec in specs.items():
        if spec.act_static:
            expected.setdefault(f"{name}.act_range", torch.empty(2, device="meta"))
    for name, tensor in tensors.items():
        want = expected.get(name)
        if want is None:
            raise PackedFormatError(f"{path}: unexpected tensor '{name}'")
        if tuple(tensor.shape) != tuple(want.shape):
            raise PackedFormatError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}"
            )
        same_kind = tensor.is_floating_point() if want.is_floating_point() else tensor.dtype == want.dtype
        if not same_kind:
            raise PackedFormatError(f"{path}: tensor '{name}' is {tensor.dtype}, expected {want.dtype}")
    missing = sorted(set(model.state_dict()) - set(tensors))
    if missing:
        raise PackedFormatError(f"{path}: tensor '{missing[0]}' is missing")


def load_packed(
    folder: Union[str, Path], model_class: Optional[type] = None, attn_implementation: Optional[str] = None
) -> nn.Module:
    """A ready ``transformers`` model (eval mode) whose quantized layers stay packed in memory.

    Every field of ``config.json`` and every tensor is checked before the model is filled, so a damaged folder
    fails here, naming the field or tensor, and never at the first forward.

    Args:
        folder: a folder written by :func:`export_packed`.
        model_class: the ``transformers`` class to build (default: ``config.json``'s ``architectures``).
        attn_implementation: ``"eager"``, ``"sdpa"``, ... (default: what ``transformers`` picks).
    Raises:
        PackedFormatError: missing, unreadable, edited or damaged files, fields or tensors.
    """
    folder = Path(folder)
    config_dict, specs = read_quantization_config(folder)
    block = config_dict["quantization_config"]
    model = _empty_model(folder, model_class or _model_class(config_dict, folder / "config.json"), attn_implementation)
    _check_specs(model, block, specs, folder / "config.json")
    verify_config_checksum(config_dict, folder)
    tensors = read_tensors(folder)
    path = folder / WEIGHTS_FILE
    to_packed(model, specs)
    _check_tensors(model, tensors, block, specs, path)
    verify_tensor_checksums(tensors, block, path)
    buffers = {name: tensors.pop(name) for name in block["non_persistent_buffers"] if name in tensors}
    ranges = {name: tensors.pop(name) for name in list(tensors) if name.endswith(".act_range")}
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}
    tensors.update({k: v for k, v in ranges.items() if _is_packed_range(k, specs)})
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.missing_keys:
        raise PackedFormatError(f"{path}: tensor '{result.missing_keys[0]}' is missing")
    modules = dict(model.named_modules())
    for name, tensor in buffers.items():
        owner, _, leaf = name.rpartition(".")
        modules[owner]._buffers[leaf] = tensor
    for key, value in ranges.items():
        if not _is_packed_range(key, specs):
            quantizer = modules[key.removesuffix(".act_range")].act_quantizer
            quantizer.x_min, quantizer.x_max = value[0].clone(), value[1].clone()
            quantizer.calibrated = torch.ones((), dtype=torch.bool)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise PackedFormatError(f"{path}: tensor '{leftover[0]}' is missing")
    model.config.quantization_config = block
    return model.eval()


def _is_packed_range(key: str, specs: dict[str, PackedSpec]) -> bool:
    spec = specs.get(key.removesuffix(".act_range"))
    return spec is not None and spec.bits is not None


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m xtc_ds.export``: export a compressed Hugging Face folder."""
    parser = argparse.ArgumentParser(prog="python -m xtc_ds.export", description=main.__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face folder of the compressed (or cleaned) model")
    parser.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON with compression_training")
    parser.add_argument(
        "--output_dir",
        required=True,
        help="folder to write: new, empty or an earlier export (replaced atomically); never the --model folder",
    )
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="also replace a non-empty --output_dir that is not an earlier export (everything in it is lost)",
    )
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="unquantized tensors")
    parser.add_argument(
        "--checkpoint", help="DeepSpeed checkpoint directory (or global_stepN folder) whose weights to export"
    )
    args = parser.parse_args(argv)
    out = exit_on_user_error(
        lambda: export_packed(
            args.model,
            args.deepspeed_config,
            args.output_dir,
            dtype=getattr(torch, args.dtype),
            checkpoint=args.checkpoint,
            overwrite=args.overwrite_output_dir,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
