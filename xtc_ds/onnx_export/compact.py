"""Smaller ``model.onnx`` at no cost in speed: initializers stored compactly and expanded by standard ONNX ops that
ONNX Runtime constant-folds when it loads the model (before ``MatMulNBits`` prepacks its weight).

- Binary weights: ``MatMulNBits`` has no 1-bit form, so its ``B`` holds 2-bit codes 1 and 3. The file stores the
  packed export's 1 bit per weight instead (``<B>.bits1``, the :mod:`xtc_ds.quant.packing` layout) and a chain
  ``BitShift -> BitwiseAnd -> 2 * bit + 1 -> pack 4 per byte`` rebuilds ``B`` at load.
- ``MatMulIntegerToFloat`` weights: its ``B`` is int8 ``(K, N)``; the file stores the codes at their own width
  (1, 2 or 4 bits, packed along N, ``<B>.codes``) and one 256-entry table per code map from a byte to its
  ``8 / width`` entries; ``Cast -> Gather -> Reshape`` rebuilds ``B`` at load (a few transient bytes per weight
  while ONNX Runtime folds it, then the int8 ``B`` its GEMM prepacks).
- Per-row scales: ``MatMulNBits`` takes one scale per block; where every block of a row has the same scale the
  file stores one per row (``<scales>.rows``) and ``Expand`` repeats it.
- Float tensors of one repeated value (scales of ``quantize_groups: 1``): the value once (``<name>.fill``) and
  ``Expand``.
- Float tensors whose every value is exact in float16 (those of a ``float16`` packed export): stored in float16
  (``<name>.fp16``) and ``Cast`` back, so the float32 values are unchanged.
- The exporter's per-node source annotations (stack traces) are dropped.

:func:`nbits_weights` reads every quantized weight of a written model back in its runtime form, compact or not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from xtc_ds.onnx_export.mapping import Int8Weight, NBitsWeight
from xtc_ds.quant.packing import pack_bits, unpack_bits

__all__ = [
    "BITS1_SUFFIX",
    "ROWS_SUFFIX",
    "FP16_SUFFIX",
    "CODES_SUFFIX",
    "FILL_SUFFIX",
    "Int8Storage",
    "compact_initializers",
    "nbits_weights",
    "int8_weights",
]

BITS1_SUFFIX = ".bits1"
CODES_SUFFIX = ".codes"
FILL_SUFFIX = ".fill"
_FILL_MIN_ELEMENTS = 256
ROWS_SUFFIX = ".rows"
FP16_SUFFIX = ".fp16"
_FP16_MIN_ELEMENTS = 1024  # smaller tensors are not worth a Cast node


def _attributes(node: Any) -> dict[str, int]:
    return {attribute.name: attribute.i for attribute in node.attribute}


def _expand_bits1(packed1: np.ndarray, n: int, k: int, block_size: int) -> np.ndarray:
    """The 2-bit ``B`` (codes ``2 * bit + 1``) of 1-bit rows: what the ONNX chain computes."""
    bits = unpack_bits(torch.from_numpy(packed1), 1)[:, :k]
    codes = pack_bits((bits * 2 + 1).contiguous(), 2)
    return codes.reshape(n, k // block_size, block_size // 4).numpy()


def _bits1_nodes(name: str, n: int, k: int, block_size: int) -> tuple[list[Any], list[Any]]:
    """Nodes computing initializer ``name`` (2-bit codes) from ``name + BITS1_SUFFIX``, and their constants."""
    from onnx import helper, numpy_helper

    def const(suffix: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, f"{name}/const/{suffix}"))
        return constants[-1].name

    constants: list[Any] = []
    shifts, one = const("shifts", np.arange(8, dtype=np.uint8)), const("one", np.array(1, np.uint8))
    last, quads = const("last_axis", np.array([-1], np.int64)), const("quads", np.array([n, k // 4, 4], np.int64))
    places = const("places", np.array([0, 2, 4, 6], np.uint8))
    shape = const("shape", np.array([n, k // block_size, block_size // 4], np.int64))
    t = f"{name}/"
    parts = [t + f"part{i}" for i in range(4)]
    nodes = [  # uint8 all the way: the folded intermediates are no larger than the codes
        helper.make_node("Unsqueeze", [name + BITS1_SUFFIX, last], [t + "bytes"]),
        helper.make_node("BitShift", [t + "bytes", shifts], [t + "shifted"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", [t + "shifted", one], [t + "bits"]),
        helper.make_node("BitShift", [t + "bits", one], [t + "even"], direction="LEFT"),
        helper.make_node("BitwiseOr", [t + "even", one], [t + "codes"]),
        helper.make_node("Reshape", [t + "codes", quads], [t + "quads"]),
        helper.make_node("BitShift", [t + "quads", places], [t + "placed"], direction="LEFT"),
        helper.make_node("Split", [t + "placed"], parts, axis=-1, num_outputs=4),
        helper.make_node("BitwiseOr", [parts[0], parts[1]], [t + "low"]),
        helper.make_node("BitwiseOr", [parts[2], parts[3]], [t + "high"]),
        helper.make_node("BitwiseOr", [t + "low", t + "high"], [t + "byte"]),
        helper.make_node("Reshape", [t + "byte", shape], [name]),
    ]
    return nodes, constants


class Int8Storage(NamedTuple):
    """How a ``MatMulIntegerToFloat`` ``B`` is stored: codes of ``width`` bits, ``entry = base + step * code``."""

    width: int
    base: int
    step: int


def _int8_table(storage: Int8Storage, dtype: np.dtype) -> np.ndarray:
    """``(256, 8 / width)``: the ``B`` entries of every byte of packed codes, first code first."""
    per_byte = 8 // storage.width
    places = np.arange(per_byte) * storage.width
    codes = (np.arange(256)[:, None] >> places) & (2**storage.width - 1)
    return (storage.base + storage.step * codes).astype(dtype)


def _int8_compact(name: str, matrix: np.ndarray, storage: Int8Storage) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``B`` (initializer ``name``, ``(K, N)``) from its packed codes and the table of its code map,
    and their initializers (the table under a name shared by every ``B`` of the same map)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = matrix.shape
    per_byte = 8 // storage.width
    padded = -(-n // per_byte) * per_byte
    codes = (matrix.astype(np.int16) - storage.base) // storage.step
    codes = np.pad(codes, ((0, 0), (0, padded - n))).astype(np.uint8)
    packed = pack_bits(torch.from_numpy(codes), storage.width).numpy()
    table = f"xtc.int8_table.{matrix.dtype}.w{storage.width}.b{storage.base}.s{storage.step}"
    t = f"{name}/"
    inits = [
        numpy_helper.from_array(packed, name + CODES_SUFFIX),
        numpy_helper.from_array(_int8_table(storage, matrix.dtype), table),
        numpy_helper.from_array(np.array([k, padded], np.int64), t + "shape"),
    ]
    whole = name if padded == n else t + "padded"
    nodes = [
        helper.make_node("Cast", [name + CODES_SUFFIX], [t + "index"], to=TensorProto.INT32),
        helper.make_node("Gather", [table, t + "index"], [t + "entries"], axis=0),
        helper.make_node("Reshape", [t + "entries", t + "shape"], [whole]),
    ]
    if padded != n:
        bounds = (("start", [0]), ("end", [n]), ("axis", [1]))
        inits += [numpy_helper.from_array(np.array(value, np.int64), t + key) for key, value in bounds]
        nodes.append(helper.make_node("Slice", [whole, t + "start", t + "end", t + "axis"], [name]))
    return nodes, inits


def _rows_nodes(name: str, rows: int, blocks: int) -> tuple[list[Any], list[Any]]:
    """Nodes computing the flat per-block scales ``name`` from one scale per row (``name + ROWS_SUFFIX``)."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([rows, blocks], np.int64), f"{name}/blocks")
    flat = numpy_helper.from_array(np.array([-1], np.int64), f"{name}/flat")
    nodes = [
        helper.make_node("Expand", [name + ROWS_SUFFIX, shape.name], [f"{name}/expanded"]),
        helper.make_node("Reshape", [f"{name}/expanded", flat.name], [name]),
    ]
    return nodes, [shape, flat]


def _uniform(graph: Any) -> tuple[list[Any], list[Any]]:
    """Float initializers of one repeated value replaced by that value; returns the Expand nodes and new
    initializers."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < _FILL_MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(init)
        if not (values == values.flat[0]).all():
            continue
        graph.initializer.remove(init)
        inits.append(numpy_helper.from_array(values.reshape(-1)[:1], init.name + FILL_SUFFIX))
        inits.append(numpy_helper.from_array(np.array(values.shape, np.int64), f"{init.name}/fill_shape"))
        nodes.append(helper.make_node("Expand", [inits[-2].name, inits[-1].name], [init.name]))
    return nodes, inits


def _half_precision(graph: Any) -> tuple[list[Any], list[Any]]:
    """float32 initializers exact in float16 replaced by float16 ones; returns the Cast nodes and new initializers."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < _FP16_MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        graph.initializer.remove(init)
        inits.append(numpy_helper.from_array(half, init.name + FP16_SUFFIX))
        nodes.append(helper.make_node("Cast", [init.name + FP16_SUFFIX], [init.name], to=TensorProto.FLOAT))
    return nodes, inits


def compact_initializers(model: Any, binary_codes: set[str], int8_storage: dict[str, Int8Storage]) -> None:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place: ``MatMulNBits`` codes named in ``binary_codes`` stored
    at 1 bit (where K is a whole number of blocks), per-row scales stored once per row, the ``MatMulIntegerToFloat``
    weights named in ``int8_storage`` stored as codes of fewer than 8 bits, one-value tensors as their value,
    float16-exact tensors in float16, no source annotations."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    new_nodes, new_inits = [], []
    for node in graph.node:
        storage = int8_storage.get(node.input[1]) if node.op_type == "MatMulIntegerToFloat" else None
        if storage is not None and storage.width < 8 and node.input[1] in initializers:
            matrix = numpy_helper.to_array(initializers[node.input[1]])
            graph.initializer.remove(initializers.pop(node.input[1]))
            nodes, constants = _int8_compact(node.input[1], matrix, storage)
            new_nodes += nodes
            new_inits += constants
        if node.op_type != "MatMulNBits":
            continue
        attrs = _attributes(node)
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        codes_name, scales_name = node.input[1], node.input[2]
        if codes_name in binary_codes and codes_name in initializers and k % block == 0:
            codes = numpy_helper.to_array(initializers[codes_name])
            bits = unpack_bits(torch.from_numpy(codes.reshape(n, -1)), 2)[:, :k]
            packed1 = pack_bits(((bits - 1) // 2).contiguous(), 1).numpy()
            graph.initializer.remove(initializers.pop(codes_name))
            new_inits.append(numpy_helper.from_array(packed1, codes_name + BITS1_SUFFIX))
            nodes, constants = _bits1_nodes(codes_name, n, k, block)
            new_nodes += nodes
            new_inits += constants
        scales = numpy_helper.to_array(initializers[scales_name]).reshape(n, -1)
        if scales.shape[1] > 1 and (scales == scales[:, :1]).all():
            graph.initializer.remove(initializers.pop(scales_name))
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(scales[:, :1]), scales_name + ROWS_SUFFIX))
            nodes, constants = _rows_nodes(scales_name, n, scales.shape[1])
            new_nodes += nodes
            new_inits += constants
    graph.initializer.extend({init.name: init for init in new_inits}.values())  # shared tables once
    fill_nodes, fill_inits = _uniform(graph)
    half_nodes, half_inits = _half_precision(graph)
    graph.initializer.extend(fill_inits + half_inits)
    new_nodes = fill_nodes + half_nodes + new_nodes
    for node in graph.node:
        del node.metadata_props[:]
    for index, node in enumerate(new_nodes):  # producers first, so the graph stays topologically sorted
        graph.node.insert(index, node)


def _float_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every initializer of ``model`` by name, float16-stored and one-value ones also as the tensor they stand for."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for name in [name for name in arrays if name.endswith(FP16_SUFFIX)]:
        arrays[name.removesuffix(FP16_SUFFIX)] = arrays[name].astype(np.float32)
    for name in [name for name in arrays if name.endswith(FILL_SUFFIX)]:
        full = name.removesuffix(FILL_SUFFIX)
        arrays[full] = np.full(arrays[f"{full}/fill_shape"], arrays[name][0], arrays[name].dtype)
    return arrays


def int8_weights(model: Any) -> dict[str, Int8Weight]:
    """Node input name of ``B`` -> the runtime :class:`Int8Weight` of every ``MatMulIntegerToFloat`` in ``model``
    (compact ones expanded as ONNX Runtime does: the table indexed by the packed codes)."""
    arrays = _float_arrays(model)
    tables = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat":
            continue
        name = node.input[1]
        matrix = arrays.get(name)
        if matrix is None:
            codes = arrays[name + CODES_SUFFIX]
            entries = arrays[tables[f"{name}/entries"]][codes.astype(np.int32)].reshape(codes.shape[0], -1)
            matrix = entries[:, : arrays[node.input[3]].shape[0]]
        zero = node.input[5] if len(node.input) > 5 and node.input[5] else None
        found[name] = Int8Weight(
            torch.from_numpy(np.array(matrix)),
            torch.from_numpy(arrays[node.input[3]].copy()),
            None if zero is None else torch.from_numpy(arrays[zero].copy()),
        )
    return found


def nbits_weights(model: Any) -> dict[str, NBitsWeight]:
    """Node input name of the codes -> the runtime :class:`NBitsWeight` of every ``MatMulNBits`` and
    ``GatherBlockQuantized`` in ``model``, read from its initializers (compact ones expanded as ONNX Runtime does)."""
    arrays = _float_arrays(model)
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = _attributes(node)
        codes_name = node.input[1 if node.op_type == "MatMulNBits" else 0]
        scales_name = node.input[2]
        zero_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if codes_name + BITS1_SUFFIX in arrays:
            codes = _expand_bits1(arrays[codes_name + BITS1_SUFFIX], attrs["N"], attrs["K"], attrs["block_size"])
        else:
            codes = arrays[codes_name]
        if scales_name + ROWS_SUFFIX in arrays:  # only MatMulNBits scales are stored per row
            rows = arrays[scales_name + ROWS_SUFFIX]
            scales = np.repeat(rows, -(-attrs["K"] // attrs["block_size"]), axis=1)
        else:
            scales = arrays[scales_name]
        zero = None if zero_name is None else torch.from_numpy(arrays[zero_name].copy())
        found[codes_name] = NBitsWeight(
            torch.from_numpy(codes.copy()),
            torch.from_numpy(scales.copy()),
            zero,
            attrs["bits"],
            attrs["block_size"],
            0,
        )
    return found
