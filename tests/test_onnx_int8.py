"""export_onnx(linear_op="MatMulIntegerToFloat"): ONNX Runtime's int8 GEMM holds the packed codes exactly (stored
at their own width, rebuilt at load), computes what the reference op says, and stays within 1e-2 of load_packed."""

import numpy as np
import pytest
import torch

from conftest import read_json, tiny_bert
from test_export import _compressed, _inputs, _load, _logits
from test_onnx_export import CONFIGS, _config_of, _relative, _run, _session, _with_types
from xtc_ds import export_packed
from xtc_ds.errors import OnnxExportError
from xtc_ds.nn import XtcPackedLinear
from xtc_ds.onnx_export import export_onnx, ops
from xtc_ds.onnx_export.compact import CODES_SUFFIX, int8_weights
from xtc_ds.onnx_export.mapping import packed_from_int8
from xtc_ds.quant.reference import storage_bits

ort = pytest.importorskip("onnxruntime", reason="pip install 'xtc_ds[onnx]' for the ONNX export")
onnx = pytest.importorskip("onnx")

INT8 = "MatMulIntegerToFloat"
ROW_CONFIGS = [c for c in CONFIGS if c[1].get("quantize_groups") != 64]  # 64 groups split a 32-wide row


def _dynamic_matmul_session(b, zero_points):
    """DynamicQuantizeLinear + MatMulIntegerToFloat in ONNX Runtime (what the export writes), A of shape (M, K)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = b.shape
    inits = [
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.linspace(0.01, 0.2, n, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.linspace(-1, 1, n, dtype=np.float32), "bias"),
    ]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "zero"))
    zero = "zero" if zero_points is not None else ""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["A"], ["codes", "a_scale", "a_zero"]),
        helper.make_node(
            "MatMulIntegerToFloat", ["codes", "B", "a_scale", "scale", "a_zero", zero, "bias"], ["Y"],
            domain="com.microsoft",
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in inits}


@pytest.mark.parametrize("signed", [True, False])
def test_reference_op_is_onnx_runtime_arithmetic(signed):
    """The pure-PyTorch op the export traces computes what ONNX Runtime computes."""
    generator = np.random.default_rng(0)
    if signed:
        # 7-bit values: on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernel (vpmaddubsw) saturates a pair of
        # products above 32767, which 255 * 64 * 2 never reaches (the 1-4-bit codes the export writes are |w| <= 8)
        b, zero_points = generator.integers(-64, 64, (96, 40)).astype(np.int8), None
    else:
        b, zero_points = generator.integers(0, 256, (96, 40)).astype(np.uint8), np.arange(40, dtype=np.uint8) * 6
    session, tensors = _dynamic_matmul_session(b, zero_points)
    for a in (generator.standard_normal((7, 96)) * 3 + 1, generator.random((5, 96)), -generator.random((2, 96))):
        a = a.astype(np.float32)
        expected = ops.dynamic_quantize_matmul(
            torch.from_numpy(a), tensors["B"], tensors["scale"], tensors.get("zero"), tensors["bias"]
        )
        got = torch.from_numpy(session.run(None, {"A": a})[0])
        assert _relative(got, expected) <= 1e-6


@pytest.mark.parametrize("name, shared, bits", ROW_CONFIGS)
def test_int8_weights_hold_the_packed_codes_at_their_own_width(tmp_path, reference_kernels, name, shared, bits):
    config = _config_of(name, shared, bits)
    packed = _load(export_packed(_compressed(config), config, tmp_path / "packed"))
    folder = export_onnx(tmp_path / "packed", tmp_path / "onnx", linear_op=INT8)
    inputs = _with_types(_inputs())
    assert _relative(_run(_session(folder), inputs), _logits(packed, inputs)) <= 1e-2

    model = onnx.load(str(folder / "model.onnx"))
    modules = dict(packed.named_modules())
    a8 = {n for n, m in modules.items() if isinstance(m, XtcPackedLinear) and m.spec.act_bits == 8}
    found = {key.removeprefix("model.").removesuffix(".int8_weight"): w for key, w in int8_weights(model).items()}
    assert a8 and set(found) == a8
    assert not [node for node in model.graph.node if node.op_type == "MatMulNBits"]  # every Linear is A8 here
    for module_name, weight in found.items():
        held = modules[module_name].quantized_weight()
        back = packed_from_int8(weight, modules[module_name].spec)
        assert torch.equal(back.codes, held.codes), module_name
        assert torch.equal(back.weight_scale, held.weight_scale.float()), module_name
        if held.weight_zero_point is not None:
            assert torch.equal(back.weight_zero_point, held.weight_zero_point.float()), module_name
    initializers = {i.name: i for i in model.graph.initializer}
    query = modules["bert.encoder.layer.0.attention.self.query"].spec
    prefix = "model.bert.encoder.layer.0.attention.self.query.int8_weight"
    width = storage_bits(query.bits)
    stored = initializers.get(prefix + CODES_SUFFIX, initializers.get(prefix))
    assert list(stored.dims) == [query.in_features, query.out_features * width // 8]  # (K, N) at the code width
    assert (prefix in initializers) == (width == 8)  # 8-bit codes are B itself


def test_rows_that_do_not_fill_a_byte_and_a_tiny_classifier_head(tmp_path, reference_kernels):
    """N not a multiple of the codes per byte (a 3-class head quantized at 1 bit) is padded and sliced at load."""
    config = _config_of("ds_xtc_1bit.json", {}, None)
    group = config["compression_training"]["weight_quantization"]["different_groups"]["wq1"]
    group["modules"] = [*group["modules"], "classifier"]
    activations = config["compression_training"]["activation_quantization"]["different_groups"]["aq1"]
    activations["modules"] = [*activations["modules"], "classifier"]
    model = tiny_bert(eager=False, num_labels=3)
    packed = _load(export_packed(_compressed(config, model), config, tmp_path / "packed"))
    assert packed.classifier.spec.out_features == 3 and packed.classifier.spec.act_bits == 8
    folder = export_onnx(tmp_path / "packed", tmp_path / "onnx", linear_op=INT8)
    found = int8_weights(onnx.load(str(folder / "model.onnx")))
    assert found["model.classifier.int8_weight"].matrix.shape == (packed.classifier.spec.in_features, 3)
    inputs = _with_types(_inputs())
    assert _relative(_run(_session(folder), inputs), _logits(packed, inputs)) <= 1e-2


def test_int8_refusals_name_the_module_or_argument(tmp_path, reference_kernels):
    config = _config_of("ds_xtc_2bit.json", {"quantize_groups": 64}, None)
    export_packed(_compressed(config), config, tmp_path / "packed")
    with pytest.raises(OnnxExportError, match=r"bert\.encoder\.layer\.0\.\S+: its 64 scale groups split its rows"):
        export_onnx(tmp_path / "packed", tmp_path / "onnx", linear_op=INT8)
    export_onnx(tmp_path / "packed", tmp_path / "onnx")  # MatMulNBits takes groups within a row
    with pytest.raises(OnnxExportError, match="accuracy_level=0 needs linear_op='MatMulNBits'"):
        export_onnx(tmp_path / "packed", tmp_path / "onnx2", linear_op=INT8, accuracy_level=0)
    with pytest.raises(OnnxExportError, match="linear_op must be one of"):
        export_onnx(tmp_path / "packed", tmp_path / "onnx2", linear_op="MatMul")
    assert not (tmp_path / "onnx2").exists()


def test_command_line_writes_int8_linears(tmp_path, reference_kernels, capsys):
    from xtc_ds.export.__main__ import main

    config = _config_of("ds_xtc_1bit.json", {}, None)
    export_packed(_compressed(config), config, tmp_path / "packed")
    main(["--format", "onnx", "--model", str(tmp_path / "packed"), "--output_dir", str(tmp_path / "onnx"),
          "--linear_op", INT8])  # fmt: skip
    assert f"wrote {tmp_path / 'onnx'}" in capsys.readouterr().out
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    assert {node.op_type for node in graph.node} >= {"MatMulIntegerToFloat"}
    assert read_json(tmp_path / "onnx" / "xtc_onnx.json")["linear_op"] == INT8
