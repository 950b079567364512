"""The fused CPU ops agree with the pure-PyTorch reference bit for bit, and fall back to it cleanly."""

import pytest
import torch

from xtc_ds import ops
from xtc_ds.errors import ConfigError, XtcError
from xtc_ds.ops import native
from xtc_ds.quant import packing, reference


def _poisoned(like):
    return torch.full_like(like, float("nan"))


SHAPES = [((1, 8), [1, 8]), ((5, 7), [1, 5]), ((64, 48), [1, 4, 64]), ((768, 768), [1, 768]), ((3072, 768), [1, 64])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, group_counts", SHAPES, ids=[f"{s[0]}x{s[1]}" for s, _ in SHAPES])
def test_weight_fake_quant_matches_reference(cpu_ops, dtype, shape, group_counts):
    w = torch.randn(shape).to(dtype)
    w.view(-1)[0] = 0.0  # sign(0) must give +alpha in both
    for groups in group_counts:
        for bits in range(1, 9):
            for symmetric in (True, False) if bits >= 3 else (True,):
                out = _poisoned(w)
                cpu_ops.fake_quant(w, bits, groups, symmetric, out=out)
                expected = reference.fake_quant_weight(w, bits, groups, symmetric)
                assert torch.equal(out, expected), (bits, groups, symmetric)


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_whole_embedding_as_one_group_and_per_token(cpu_ops, bits):
    table = torch.randn(30522, 768)
    for groups in (1, 30522):
        out = _poisoned(table)
        cpu_ops.fake_quant(table, bits, groups, True, out=out)
        assert torch.equal(out, reference.fake_quant_weight(table, bits, groups, True))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_per_token_matches_reference(bits, symmetric, dtype, cpu_ops):
    x = (torch.randn(4, 33, 96) * torch.linspace(0.01, 10, 96)).to(dtype)
    expected = reference.fake_quant_activation(x, bits, symmetric)
    assert torch.equal(ops.fake_quant_activation(x, bits, symmetric), expected)
    assert "cpu" in native.registered_devices()


def test_non_contiguous_input_and_ste_gradient(cpu_ops):
    w = torch.randn(48, 32, requires_grad=True)
    out = ops.fake_quant_weight(w.t(), 1, 32)  # Conv1D passes a transposed view
    assert torch.equal(out, reference.fake_quant_weight(w.detach().t(), 1, 32))
    grad = torch.randn(32, 48)
    out.backward(grad)
    assert torch.equal(w.grad, grad.t())


@pytest.mark.parametrize("bits", packing.PACK_BITS)
@pytest.mark.parametrize("shape", [(8,), (3, 16), (2, 5, 64)])
def test_pack_unpack_match_reference_and_round_trip(cpu_ops, bits, shape):
    codes = torch.randint(0, 2**bits, shape, dtype=torch.uint8)
    packed = ops.pack_bits(codes, bits)
    assert torch.equal(packed, packing.pack_bits(codes, bits))
    assert packed.shape[-1] == shape[-1] * bits // 8
    assert torch.equal(ops.unpack_bits(packed, bits), codes)
    assert torch.equal(packing.unpack_bits(packed, bits), codes)


def test_packed_layout_worked_example():
    one_bit = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1], dtype=torch.uint8)
    two_bit = torch.tensor([2, 0, 1, 2], dtype=torch.uint8)
    for pack in (packing.pack_bits, ops.pack_bits):
        assert pack(one_bit, 1).tolist() == [0x8D]
        assert pack(two_bit, 2).tolist() == [0x92]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="into 7 equal groups"):
        ops.fake_quant_weight(torch.randn(4, 8), 1, 7)
    with pytest.raises(ValueError, match="bits must be 1..8"):
        ops.fake_quant_weight(torch.randn(4, 8), 0, 1)
    with pytest.raises(ValueError, match="multiple of 4 to pack 2-bit codes"):
        ops.pack_bits(torch.zeros(3, 6, dtype=torch.uint8), 2)
    with pytest.raises(TypeError, match="codes must be uint8"):
        ops.pack_bits(torch.zeros(8), 1)


def test_kernel_choice_from_the_environment(monkeypatch):
    monkeypatch.delenv("XTC_KERNELS", raising=False)
    monkeypatch.setenv("XTC_DISABLE_OPS", "1")
    assert native._choice_from_environment() == "reference"
    monkeypatch.setenv("XTC_DISABLE_OPS", "0")
    assert native._choice_from_environment() == "auto"
    monkeypatch.setenv("XTC_KERNELS", "Native")
    assert native._choice_from_environment() == "native"
    monkeypatch.setenv("XTC_KERNELS", "fused")
    with pytest.raises(ConfigError, match="XTC_KERNELS='fused'"):
        native._choice_from_environment()
    with pytest.raises(ConfigError, match="expected one of auto, reference, native"):
        ops.set_kernels("fast")


def test_reference_choice_is_used_even_with_kernels_registered(cpu_ops, monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "fake_quant_weight", lambda *args: calls.append(args) or torch.zeros(8, 16))
    x = torch.randn(8, 16)
    ops.fake_quant_weight(x, 1, 8)
    assert not calls  # the extension served the call
    with ops.use_kernels("reference"):
        assert ops.kernels() == "reference"
        ops.fake_quant_weight(x, 1, 8)
        assert native.status()["cpu"].startswith("not used")
    assert len(calls) == 1 and ops.kernels() == "auto"


def test_failed_build_warns_once_with_log_and_falls_back(monkeypatch, tmp_path, caplog):
    def broken_build():
        raise RuntimeError("c++: fatal error: no compiler")

    monkeypatch.setattr(native.builder, "build_cpu", broken_build)
    monkeypatch.setattr(native.builder, "build_dir", lambda name: tmp_path / name)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_registered", set())
    with ops.use_kernels("auto"), caplog.at_level("WARNING", logger="xtc_ds"):
        assert native.register_for("cpu") is False
        assert native.register_for("cpu") is False
    logs = list(tmp_path.glob("*.build.log"))
    assert len(logs) == 1 and "no compiler" in logs[0].read_text()
    assert sum("could not be built" in r.getMessage() for r in caplog.records) == 1
    assert str(logs[0]) in native.status()["cpu"]
    with ops.use_kernels("native"), pytest.raises(XtcError, match="kernels 'native' chosen"):
        native.register_for("cpu")
