"""load_packed(): a packed folder back into a ready ``transformers`` model whose quantized layers stay packed;
load_cleaned(): a cleaned (possibly pruned, smaller) model saved with ``save_pretrained`` back at its own shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from xtc_ds._compat import set_attn_implementation
from xtc_ds.config import ConfigError
from xtc_ds.errors import PackedFormatError
from xtc_ds.export.format import (
    WEIGHTS_FILE,
    packed_specs,
    read_header,
    read_quantization_config,
    read_tensors,
    verify_config_checksum,
    verify_tensor_checksums,
)
from xtc_ds.export.sparse_codes import BITMAP, VALUES, expand_compact
from xtc_ds.inject import to_packed
from xtc_ds.nn.packed_linear import XtcPackedLinear
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.pruning import file_shape, shrink_to

__all__ = ["load_packed", "load_cleaned"]


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
            set_attn_implementation(hf_config, attn_implementation)
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
        for field in sorted(set(stored) | set(wanted)):
            if stored.get(field) != wanted.get(field):
                raise PackedFormatError(
                    f"{path}: quantization_config.modules.{name}.{field} is {stored.get(field)!r}, but "
                    f"compression_training and the model give {wanted.get(field)!r}"
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
    try:
        shrink_to(model, block.get("pruned_shapes", {}), "quantization_config.pruned_shapes")
    except ConfigError as err:
        raise PackedFormatError(f"{folder / 'config.json'}: {err}") from None
    _check_specs(model, block, specs, folder / "config.json")
    verify_config_checksum(config_dict, folder)
    tensors = read_tensors(folder)
    path = folder / WEIGHTS_FILE
    to_packed(model, specs)
    verify_tensor_checksums(tensors, block, path)
    _expand_compact(tensors, block.get("compact_sparse", []), specs, path)
    _check_tensors(model, tensors, block, specs, path)
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
    for module in model.modules():
        if isinstance(module, XtcPackedLinear) and module.uses_packed_linear():
            module.prepare_kernel()  # once here, so compiled and exported graphs read the prepacked weight
    model.config.quantization_config = block
    return model.eval()


def _expand_compact(
    tensors: dict[str, torch.Tensor], names: list[str], specs: dict[str, PackedSpec], path: Path
) -> None:
    """Replace each compact sparse weight (bitmap and nonzero codes) by its dense ``packed_weight``."""
    for name in names:
        keys = (f"{name}.{BITMAP}", f"{name}.{VALUES}")
        missing = [key for key in keys if key not in tensors]
        if missing:
            raise PackedFormatError(f"{path}: tensor '{missing[0]}' is missing")
        try:
            tensors[f"{name}.packed_weight"] = expand_compact(*(tensors.pop(key) for key in keys), specs[name])
        except ValueError as err:
            raise PackedFormatError(f"{path}: module '{name}': {err}") from None


def _is_packed_range(key: str, specs: dict[str, PackedSpec]) -> bool:
    spec = specs.get(key.removesuffix(".act_range"))
    return spec is not None and spec.bits is not None


def load_cleaned(
    folder: Union[str, Path],
    model_class: Optional[type] = None,
    attn_implementation: Optional[str] = None,
    strict: bool = True,
) -> nn.Module:
    """A model that :func:`xtc_ds.redundancy_clean` cleaned and ``save_pretrained`` saved (``launch/train.py``'s
    ``final/``), in eval mode, with the smaller Linears, Conv2d and BatchNorm2d that pruning left.

    ``from_pretrained`` cannot read a pruned one: transformers 5 has no ``prune_heads`` and builds every layer at
    the config's size. Here the model is built from ``config.json`` and each module whose weights in
    ``model.safetensors`` are smaller is rebuilt at their shape before they are loaded. Weights are the baked
    (quantized) values; activations run in float (the packed export quantizes them).

    Args:
        folder: a Hugging Face folder (``config.json`` + ``model.safetensors``).
        model_class: the ``transformers`` class to build (default: ``config.json``'s ``architectures``).
        attn_implementation: ``"eager"``, ``"sdpa"``, ... (default: what ``transformers`` picks).
        strict: refuse tensors the model does not hold; without, they are ignored as ``from_pretrained`` does
            (the pruning scores a compressed, not yet cleaned model saves).
    Raises:
        PackedFormatError: naming the file and field or tensor that is missing, unreadable or does not fit.
    """
    import transformers

    folder = Path(folder)
    config_path, path = folder / "config.json", folder / WEIGHTS_FILE
    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as err:  # transformers raises many types for a missing or damaged config.json
        raise PackedFormatError(f"{config_path}: unreadable ({type(err).__name__}: {err})") from None
    if attn_implementation is not None:
        set_attn_implementation(hf_config, attn_implementation)
    model_class = model_class or _model_class(hf_config.to_dict(), config_path)
    try:
        with torch.random.fork_rng():  # the random initialization, overwritten below, leaves the caller's RNG alone
            model = model_class(hf_config)
    except Exception as err:  # transformers raises many types for fields it cannot build a model from
        raise PackedFormatError(f"{config_path}: no model can be built from it ({err})") from None
    header = read_header(path)
    shapes = {}
    for name, module in model.named_modules():
        stored = file_shape(module, name, {key: entry["shape"] for key, entry in header.items()})
        if stored is not None and stored != file_shape(module, name, None):
            shapes[name] = stored
    try:
        shrink_to(model, shapes, str(path))
    except ConfigError as err:
        raise PackedFormatError(str(err)) from None
    tensors = read_tensors(folder)
    expected = model.state_dict()
    if not strict:
        tensors = {name: tensor for name, tensor in tensors.items() if name in expected}
    for name, tensor in tensors.items():
        if name not in expected:
            raise PackedFormatError(f"{path}: unexpected tensor '{name}' for {model_class.__name__}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PackedFormatError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise PackedFormatError(f"{path}: tensor '{missing[0]}' is missing")
    model.load_state_dict(tensors)
    return model.eval()
