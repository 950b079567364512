"""The torch.library ops: schemas, fake kernels and gradients pass opcheck on every kernel choice; the QAT and
packed modules trace whole under torch.compile and torch.export."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds import ops
from xtc_ds.nn.fake_quant import ActFakeQuantizer, WeightFakeQuantizer
from xtc_ds.nn.packed_linear import XtcPackedLinear
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.nn.qat_linear import XtcQATLinear
from xtc_ds.ops import library, native
from xtc_ds.quant import packing, reference


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["reference", "auto"])
def kernel_choice(request):
    with ops.use_kernels(request.param):
        if request.param == "auto" and native.load_cpu() is None:
            pytest.skip(f"CPU ops did not build: {native.status()['cpu']}")
        yield request.param


def _packed_case(bits, n=32, k=24, device="cpu"):
    quantized = reference.quantize_weight(torch.randn(n, k), bits, n)
    storage = reference.storage_bits(bits)
    codes = F.pad(quantized.codes, (0, packing.padded_length(k, storage) - k))
    return packing.pack_bits(codes, storage).to(device), quantized.weight_scale.to(device)


@pytest.mark.parametrize("device", _devices())
def test_opcheck_fake_quant(kernel_choice, device):
    w = torch.randn(32, 16, device=device, requires_grad=True)
    for bits in (1, 2, 4, 8):
        torch.library.opcheck(library.fake_quant_weight, (w, bits, 4, True, False))
    torch.library.opcheck(library.fake_quant_weight, (w.detach().t(), 8, 4, False, False))
    x = torch.randn(3, 5, 16, device=device, requires_grad=True)
    torch.library.opcheck(library.fake_quant_activation, (x, 8, True, None, None))
    torch.library.opcheck(library.fake_quant_activation, (x, 4, False, None, None))
    low, high = torch.tensor(-1.0, device=device), torch.tensor(2.0, device=device)
    torch.library.opcheck(library.fake_quant_activation, (x, 8, True, low, high))


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("bits", packing.PACK_BITS)
def test_opcheck_pack_unpack(kernel_choice, device, bits):
    codes = torch.randint(0, 2**bits, (6, 16), dtype=torch.uint8, device=device)
    torch.library.opcheck(library.pack_bits, (codes, bits))
    torch.library.opcheck(library.unpack_bits, (packing.pack_bits(codes, bits), bits))


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("bits", [1, 2, 8])
def test_opcheck_prepack_and_packed_linear(kernel_choice, device, bits):
    packed, scale = _packed_case(bits, device=device)
    torch.library.opcheck(library.prepack_weight, (packed, bits, 24))
    kernel_weight, row_sum = ops.prepack_weight(packed, bits, 24)
    x, bias = torch.randn(2, 3, 24, device=device), torch.randn(32, device=device)
    torch.library.opcheck(library.packed_linear, (x, kernel_weight, row_sum, scale, bias, bits, 8))
    torch.library.opcheck(library.packed_linear, (x, kernel_weight, row_sum, scale, None, bits, 4))


def test_straight_through_gradients():
    w = torch.randn(4, 8, requires_grad=True)
    grad = torch.randn(4, 8)
    ops.fake_quant_weight(w, 1, 2).backward(grad)
    assert torch.equal(w.grad, grad)
    x = torch.randn(2, 3, 8, requires_grad=True)
    (ops.fake_quant_activation(x, 8) * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_bad_arguments_are_refused_before_dispatch():
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.prepack_weight(torch.zeros(8, 1, dtype=torch.uint8), 1, 8)
    with pytest.raises(ValueError, match="bytes per row"):
        ops.prepack_weight(torch.zeros(16, 3, dtype=torch.uint8), 1, 8)
    with pytest.raises(ValueError, match="both x_min and x_max"):
        ops.fake_quant_activation(torch.randn(2, 4), 8, True, torch.tensor(0.0), None)


def _qat_linear():
    module = XtcQATLinear.from_linear(
        nn.Linear(32, 48), WeightFakeQuantizer("wq1", 1, None), ActFakeQuantizer("aq1", 8)
    )
    module.weight_quantizer.enabled = True
    module.act_quantizer.enabled = True
    return module


def _packed_linear(bits=1):
    linear = nn.Linear(32, 48)
    spec = PackedSpec(kind="linear", in_features=32, out_features=48, bias=True, bits=bits, num_groups=48, act_bits=8)
    return XtcPackedLinear.from_qat(linear, spec)


@pytest.mark.parametrize("choice", ["reference", "auto"])
def test_qat_and_packed_modules_compile_whole(choice):
    with ops.use_kernels(choice):
        x = torch.randn(4, 7, 32, requires_grad=True)
        qat = _qat_linear()
        compiled = torch.compile(qat, fullgraph=True, backend="aot_eager")
        eager_out = qat(x)
        compiled_out = compiled(x)
        assert torch.equal(compiled_out, eager_out)
        (grad_eager,) = torch.autograd.grad(eager_out.sum(), x)
        (grad_compiled,) = torch.autograd.grad(compiled_out.sum(), x)
        assert torch.equal(grad_compiled, grad_eager)
        packed = _packed_linear()
        with torch.no_grad():
            expected = packed(x)
            assert torch.equal(torch.compile(packed, fullgraph=True, backend="aot_eager")(x), expected)


def test_packed_module_exports():
    packed = _packed_linear(bits=2)
    packed.prepare_kernel()
    x = torch.randn(3, 32)
    program = torch.export.export(packed, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "xtc_ds.packed_linear.default" in targets
    assert torch.equal(program.module()(x), packed(x))


def test_inductor_fuses_the_reference_of_fake_quantization():
    qat = _qat_linear()
    x = torch.randn(4, 7, 32)
    compiled = torch.compile(qat, fullgraph=True)
    torch.testing.assert_close(compiled(x), qat(x), rtol=1e-5, atol=1e-5)
    code = torch._inductor.utils.run_and_get_code(compiled, x * 2)[1]
    assert code and all(source.strip() for source in code)  # Inductor generated code for the call
    assert not any("xtc_ds" in source for source in code)  # inlined and fused, not called as an opaque op


def test_qat_module_exports_with_the_xtc_ds_ops():
    program = torch.export.export(_qat_linear().eval(), (torch.randn(3, 32),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"xtc_ds.fake_quant_weight.default", "xtc_ds.fake_quant_activation.default"} <= targets
