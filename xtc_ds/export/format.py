"""The packed folder format: which modules a config packs and how (:func:`packed_specs`), what the folder's
``config.json`` block may say, and how damage to it is found. The writer and the reader both use this module;
the tensors of each packed module and their shapes are those of :func:`xtc_ds.nn.packed_linear.packed_shapes`.

Everything here reads or checks files and never builds a model, so a damaged folder fails with a
:class:`PackedFormatError` naming the file, field or tensor before :func:`xtc_ds.load_packed` touches the model,
never at the first forward. Format 2 adds two checksums to format 1: the sha256 of every tensor
(``tensor_sha256``; a flipped byte names its tensor) and of the model-defining part of ``config.json``
(``config_sha256``; an edit that would silently change the arithmetic, such as 8-bit activations turned into
4-bit ones, is refused). Format 1 folders still load, with a warning that they cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from xtc_ds._log import log_rank_zero
from xtc_ds.config import CompressionConfig, QuantizationType, RangeCalibration, load_compression_config
from xtc_ds.errors import ConfigError, PackedFormatError
from xtc_ds.matching import plan_injection, weight_shape
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.nn.qat_linear import is_conv1d
from xtc_ds.pruning import sparse_owners

__all__ = [
    "packed_specs",
    "FORMAT_VERSION",
    "PRUNED_FORMAT_VERSION",
    "QUANT_METHOD",
    "LAYOUT",
    "WEIGHTS_FILE",
    "DTYPE_BYTES",
    "tensor_sha256",
    "config_sha256",
    "read_quantization_config",
    "read_header",
    "read_tensors",
]

FORMAT_VERSION = 2
PRUNED_FORMAT_VERSION = 3  # format 2 plus ``pruned_shapes``/``compact_sparse``; only for pruned models, others stay 2
READABLE_VERSIONS = (1, 2, 3)
QUANT_METHOD = "xtc"
LAYOUT = "rows_lsb_first"
WEIGHTS_FILE = "model.safetensors"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_COSMETIC_KEYS = ("id2label", "label2id", "_name_or_path", "transformers_version")  # leave the arithmetic alone
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
"""Bytes per element of each safetensors dtype an export may hold."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as stored (dtype and layout of ``tensor.contiguous()``)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of ``config.json`` without its cosmetic keys (label names, paths) and without this checksum."""
    fingerprint = {key: value for key, value in config.items() if key not in _COSMETIC_KEYS}
    block = dict(fingerprint.get("quantization_config", {}))
    block.pop("config_sha256", None)
    fingerprint["quantization_config"] = block
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fail(path: Path, what: str) -> PackedFormatError:
    return PackedFormatError(f"{path}: {what}")


def _check_block(block: Any, path: Path) -> None:
    """Every field of ``quantization_config`` against what the format allows."""
    if not isinstance(block, dict) or block.get("quant_method") != QUANT_METHOD:
        raise _fail(path, f"quantization_config.quant_method is not '{QUANT_METHOD}' (not an xtc export)")
    version = block.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise _fail(
            path,
            f"quantization_config.format_version {version!r} is not supported (this xtc_ds reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})",
        )
    if block.get("layout") != LAYOUT:
        raise _fail(path, f"quantization_config.layout {block.get('layout')!r} is not '{LAYOUT}'")
    if block.get("dtype") not in STORAGE_DTYPES:
        raise _fail(path, f"quantization_config.dtype {block.get('dtype')!r} is not one of {list(STORAGE_DTYPES)}")
    buffers = block.get("non_persistent_buffers", [])
    if not isinstance(buffers, list) or not all(isinstance(name, str) for name in buffers):
        raise _fail(path, "quantization_config.non_persistent_buffers must be a list of tensor names")
    if not isinstance(block.get("modules"), dict):
        raise _fail(path, "quantization_config.modules must be an object (module name -> spec)")
    try:
        CompressionConfig.from_dict(block.get("compression_training"))
    except ConfigError as err:
        raise _fail(path, f"quantization_config.{err}") from None
    if version >= 2:
        digests = block.get("tensor_sha256")
        if not isinstance(digests, dict) or not all(isinstance(d, str) for d in digests.values()):
            raise _fail(path, "quantization_config.tensor_sha256 must map every tensor name to its sha256")
        if not isinstance(block.get("config_sha256"), str):
            raise _fail(path, "quantization_config.config_sha256 is missing")
    shapes = block.get("pruned_shapes", {})
    if (version < PRUNED_FORMAT_VERSION and "pruned_shapes" in block) or not isinstance(shapes, dict):
        raise _fail(path, "quantization_config.pruned_shapes must be an object, and only in format 3")
    compact = block.get("compact_sparse", [])
    if (version < PRUNED_FORMAT_VERSION and "compact_sparse" in block) or not (
        isinstance(compact, list) and all(name in block["modules"] for name in compact)
    ):
        raise _fail(path, "quantization_config.compact_sparse must list modules of the export, and only in format 3")
    for name, shape in shapes.items():
        if not (isinstance(shape, list) and len(shape) in (1, 2) and all(type(d) is int and d >= 1 for d in shape)):
            raise _fail(
                path,
                f"quantization_config.pruned_shapes.{name}: {shape!r} (must be [out_features, in_features], or "
                "[channels] for a BatchNorm2d)",
            )


def read_quantization_config(folder: Union[str, Path]) -> tuple[dict[str, Any], dict[str, PackedSpec]]:
    """``(config.json as a dict, module name -> PackedSpec)`` of an exported folder, every field checked.

    Raises:
        PackedFormatError: naming ``config.json`` and the field that is missing, malformed or edited.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise _fail(path, "missing (not an exported folder)")
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise _fail(path, f"not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise _fail(path, "not a JSON object")
    block = config.get("quantization_config")
    _check_block(block, path)
    specs = {}
    for name, data in block["modules"].items():
        try:
            specs[name] = PackedSpec.from_dict(data)
        except (TypeError, ValueError) as err:
            raise _fail(path, f"quantization_config.modules.{name}: {err}") from None
    return config, specs


def verify_config_checksum(config: dict[str, Any], folder: Path) -> None:
    """Refuse a ``config.json`` edited since export (format 2); warn that format 1 cannot be checked."""
    block = config["quantization_config"]
    if block["format_version"] < 2:
        log_rank_zero(
            logging.WARNING,
            f"xtc_ds: {folder} is a format-1 export without checksums; damage to it cannot be detected (re-export it)",
        )
        return
    if config_sha256(config) != block["config_sha256"]:
        raise _fail(
            folder / "config.json",
            "changed since export (config_sha256 differs): its fields decide the model's arithmetic, so an edited "
            "copy would give wrong outputs; export the model again",
        )


def read_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), without reading tensor data.

    Raises:
        PackedFormatError: naming the file (and tensor) when the header is truncated, oversized or malformed.
    """
    if not path.is_file():
        raise _fail(path, "missing")
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _fail(path, f"{size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise _fail(path, f"header length {length} exceeds the file's {size} bytes (truncated or not safetensors)")
        try:
            header = json.loads(handle.read(length))
        except ValueError as err:
            raise _fail(path, f"unreadable safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise _fail(path, "unreadable safetensors header (not an object)")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        entry = info if isinstance(info, dict) else {}
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (
            entry.get("dtype") not in DTYPE_BYTES
            or not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise _fail(path, f"tensor '{name}' has a malformed header entry {info!r}"[:300])
        end = max(end, offsets[1])
    if end > size - 8 - length:
        raise _fail(path, f"tensor data ends at byte {end} of a {size - 8 - length}-byte data section (truncated)")
    return header


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, after :func:`read_header` has checked the file's structure."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    read_header(path)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise _fail(path, f"unreadable ({err})") from None


def verify_tensor_checksums(tensors: dict[str, torch.Tensor], block: dict[str, Any], path: Path) -> None:
    """Name the first tensor that is missing, extra or changed against ``tensor_sha256`` (format 2)."""
    if block["format_version"] < 2:
        return
    digests = block["tensor_sha256"]
    for name in sorted(set(digests) | set(tensors)):
        if name not in tensors:
            raise _fail(path, f"tensor '{name}' is missing")
        if name not in digests:
            raise _fail(path, f"unexpected tensor '{name}' (not in the export's tensor_sha256)")
        if tensor_sha256(tensors[name]) != digests[name]:
            raise _fail(path, f"tensor '{name}' changed since export (sha256 differs)")


def packed_specs(model: nn.Module, deepspeed_config: Any) -> dict[str, PackedSpec]:
    """Module name -> :class:`PackedSpec` for every module the config compresses (final ``target_bits``).

    Works on a plain model, an injected QAT model or a ``redundancy_clean``ed one: the config decides.
    """
    config = load_compression_config(deepspeed_config)
    wq, aq = config.weight_quantization, config.activation_quantization
    modules = dict(model.named_modules())
    sparse = sparse_owners(model, config)
    specs = {}
    for name, plan in plan_injection(model, config).items():
        module = modules[name]
        out_features, in_features = weight_shape(module)
        if isinstance(module, nn.Embedding):
            kind = "embedding"
        else:
            kind = "conv1d" if is_conv1d(module) else "linear"
        spec: dict[str, Any] = {"kind": kind, "out_features": out_features, "in_features": in_features}
        spec["bias"] = getattr(module, "bias", None) is not None
        if kind == "embedding":
            spec["padding_idx"] = module.padding_idx
        if plan.weight_group is not None:
            params = wq.different_groups[plan.weight_group].params
            spec["bits"] = params.target_bits
            if params.format is not None:
                spec["weight_format"] = params.format
            if name in sparse:
                spec["bits"] = params.target_format.pruned_bits
            spec["group"] = plan.weight_group
            spec["num_groups"] = out_features if plan.num_groups is None else plan.num_groups
            spec["symmetric"] = wq.shared_parameters.quantization_type is QuantizationType.SYMMETRIC
        if plan.act_group is not None:
            spec["act_bits"] = aq.different_groups[plan.act_group].params.bits
            spec["act_symmetric"] = aq.shared_parameters.quantization_type is QuantizationType.SYMMETRIC
            spec["act_static"] = aq.shared_parameters.range_calibration is RangeCalibration.STATIC
        specs[name] = PackedSpec(**spec)
    return specs
