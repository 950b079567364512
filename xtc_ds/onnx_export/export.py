"""export_onnx(): a compressed classifier as an ONNX Runtime folder that loads without xtc_ds.

The folder holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask`` and, where the model has token types,
``token_type_ids``, with dynamic batch and sequence axes; output ``logits``), the model's plain ``config.json``,
the tokenizer files and ``xtc_onnx.json`` (what was exported and how). Quantized Linears are
``com.microsoft::MatMulNBits`` nodes (or, on request, ``MatMulIntegerToFloat`` with int8 weights rebuilt at load
from their 1/2/4-bit codes) and quantized embeddings ``GatherBlockQuantized`` (2/4/8-bit) or a
1-bit unpack, holding the packed export's codes and scales unchanged (:mod:`xtc_ds.onnx_export.mapping`), binary
per-row scales (and, on request, binary codes) stored compactly in the file (:mod:`xtc_ds.onnx_export.compact`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from xtc_ds.errors import OnnxExportError
from xtc_ds.export.load import load_packed
from xtc_ds.export.write import check_output_dir, copy_tokenizer, export_packed, is_export
from xtc_ds.files import replace_dir_atomic
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.onnx_export import ops
from xtc_ds.onnx_export.compact import Int8Storage, compact_initializers, int8_weights, nbits_weights
from xtc_ds.onnx_export.mapping import int8_code_map, packed_from_int8, packed_from_nbits
from xtc_ds.onnx_export.modules import Int8Linear, onnx_ready
from xtc_ds.onnx_export.options import OnnxExportOptions
from xtc_ds.quant.reference import QuantizedWeight

__all__ = ["export_onnx", "ONNX_FILE", "RECORD_FILE", "model_input_names"]

ONNX_FILE = "model.onnx"
RECORD_FILE = "xtc_onnx.json"
_OPSET = 20


_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
"""Loggers that narrate every graph pass (INFO) or name ops the export never uses (torchvision's)."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter's pass-by-pass INFO lines, its 'torchvision is not installed' notes and its UserWarnings
    about merged axis names say nothing a user can act on: kept out of the console for the export's duration.
    Errors still raise."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise OnnxExportError(
            f"ONNX export needs the onnx and onnxscript packages ({err}); pip install 'xtc_ds[onnx]'"
        ) from None


def model_input_names(model: nn.Module) -> list[str]:
    """The inputs a Hugging Face sequence classifier is exported with (token types only where the model has them)."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


class _Logits(nn.Module):
    """The classifier called with positional inputs, returning only its logits (what ONNX exports)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits


def _is_onnx_export(folder: Path) -> bool:
    return (folder / RECORD_FILE).is_file()


def _packed_source(source: Any, deepspeed_config: Any, scratch: Path) -> tuple[nn.Module, Optional[Path]]:
    """A packed model (and the folder it came from): a packed folder is loaded, anything else exported first."""
    if isinstance(source, (str, Path)) and is_export(Path(source)):
        return load_packed(source, attn_implementation="eager"), Path(source)
    folder = export_packed(source, deepspeed_config, scratch / "packed")
    return load_packed(folder, attn_implementation="eager"), folder


def _same_weight(decoded: Optional[QuantizedWeight], held: QuantizedWeight) -> bool:
    """Codes, scales and (where the packed module has them) zero points equal, bit for bit."""
    if decoded is None or not torch.equal(decoded.codes, held.codes):
        return False
    if not torch.equal(decoded.weight_scale, held.weight_scale.float()):
        return False
    zero, decoded_zero = held.weight_zero_point, decoded.weight_zero_point
    return zero is None or (decoded_zero is not None and torch.equal(decoded_zero, zero.float()))


def _check_round_trip(model_proto: Any, packed: nn.Module, specs: dict[str, PackedSpec]) -> None:
    """Every quantized weight as written in ``model_proto`` decodes to the packed module's codes and scales, bit for
    bit (1-bit tables are the packed bytes themselves and are compared as such)."""
    from onnx import numpy_helper

    modules = dict(packed.named_modules())
    nbits, int8 = nbits_weights(model_proto), int8_weights(model_proto)
    arrays = {init.name: init for init in model_proto.graph.initializer}
    for name, spec in specs.items():
        if spec.bits is None:
            continue
        codes_name, int8_name = f"model.{name}.codes", f"model.{name}.int8_weight"
        if int8_name in int8:
            same = _same_weight(packed_from_int8(int8[int8_name], spec), modules[name].quantized_weight())
        elif spec.kind == "embedding" and spec.format.single_bit:
            same = codes_name in arrays and np.array_equal(
                numpy_helper.to_array(arrays[codes_name]), modules[name].packed_weight.numpy()
            )
        else:
            decoded = packed_from_nbits(nbits[codes_name], spec) if codes_name in nbits else None
            same = _same_weight(decoded, modules[name].quantized_weight())
        if not same:
            raise OnnxExportError(f"{name}: its ONNX codes or scales do not decode to the packed ones (a bug)")


def export_onnx(
    source: Any,
    output_dir: Union[str, Path],
    deepspeed_config: Optional[Any] = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    options: Optional[OnnxExportOptions] = None,
    **option_values: Any,
) -> Path:
    """Write a compressed sequence classifier as an ONNX Runtime folder, atomically.

    Args:
        source: a folder written by :func:`xtc_ds.export_packed`, or what ``export_packed`` accepts (a compressed
            model, a DeepSpeed engine, a Hugging Face folder of a compressed model); the latter is packed first.
        output_dir: new, empty, or an earlier ONNX export (replaced as a whole); never the source folder.
        deepspeed_config: the compression config for a ``source`` that is not a packed folder (None: the one the
            model was compressed with in this process).
        tokenizer: a tokenizer or a folder to copy tokenizer files from (default: the packed folder's).
        overwrite: also replace a non-empty ``output_dir`` that is not an earlier ONNX export.
        options: how the model is written (:class:`~xtc_ds.onnx_export.options.OnnxExportOptions`: accuracy
            level, block size, 1-bit storage, the Linear op); or give its fields as keywords
            (``accuracy_level=0``, ``linear_op="MatMulIntegerToFloat"``), not both.
    Returns:
        ``output_dir``.
    Raises:
        OnnxExportError: a module the export cannot express exactly, bad arguments, or missing ``onnx``/
            ``onnxscript``; OutputDirError: an ``output_dir`` that may not be replaced.
    """
    if options is not None and option_values:
        raise OnnxExportError(f"export_onnx: give options= or {sorted(option_values)} as keywords, not both")
    if options is None:
        try:
            options = OnnxExportOptions(**option_values)
        except TypeError as err:
            raise OnnxExportError(f"export_onnx: {err}") from None
    _require_onnx()
    output_dir = Path(output_dir)
    check_output_dir(output_dir, (source, tokenizer), overwrite, is_ours=_is_onnx_export)
    with tempfile.TemporaryDirectory(prefix=".xtc-onnx-") as scratch:
        model, packed_dir = _packed_source(source, deepspeed_config, Path(scratch))
        specs = {
            name: PackedSpec.from_dict(spec) for name, spec in model.config.quantization_config["modules"].items()
        }
        ready = onnx_ready(model, specs, options)
        names = model_input_names(model)
        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
        axes = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                _Logits(ready, names).eval(),
                example,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=(tuple({0: axes["batch"], 1: axes["sequence"]} for _ in names),),
                custom_translation_table=ops.translations(),
                opset_version=_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model_proto = program.model_proto
        binary = {
            f"model.{name}.codes"
            for name, spec in specs.items()
            if spec.bits is not None and spec.format.single_bit and spec.kind != "embedding"
        }
        binary = binary if options.one_bit_storage else set()
        int8_storage = {
            f"model.{name}.int8_weight": Int8Storage(specs[name].format.storage_bits, *int8_code_map(specs[name]))
            for name, module in ready.named_modules()
            if isinstance(module, Int8Linear)
        }
        compact_initializers(model_proto, binary, int8_storage)
        _check_round_trip(model_proto, model, specs)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        record = {
            **options.record(),
            "inputs": names,
            "modules": {name: spec.to_dict() for name, spec in specs.items()},
            "packed_config_sha256": model.config.quantization_config.get("config_sha256"),
        }

        def fill(folder: Path) -> None:
            import onnx

            onnx.save(model_proto, str(folder / ONNX_FILE))
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            (folder / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            copy_tokenizer(tokenizer if tokenizer is not None else packed_dir, folder)

        replace_dir_atomic(output_dir, fill)
    return output_dir
