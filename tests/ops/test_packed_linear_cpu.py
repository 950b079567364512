"""The CPU packed linear kernel agrees with the reference (dequantize, fake-quantize the input, matmul)."""

import pytest
import torch
import torch.nn.functional as F

from xtc_ds import ops
from xtc_ds.ops import builder, library
from xtc_ds.quant import packing, reference


def _packed_rows(codes, bits):
    storage = reference.storage_bits(bits)
    padding = packing.padded_length(codes.shape[1], storage) - codes.shape[1]
    return packing.pack_bits(F.pad(codes, (0, padding)), storage)


SHAPES = [(1, 4, 16), (13, 36, 48), (8, 64, 32), (128, 384, 1536), (37, 1536, 384)]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m, k, n", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_packed_linear_matches_reference(cpu_ops, bits, m, k, n):
    w, x, bias = torch.randn(n, k), torch.randn(m, k) * 3, torch.randn(n)
    quantized = reference.quantize_weight(w, bits, n)
    kernel_weight, row_sum = cpu_ops.prepack_weight(_packed_rows(quantized.codes, bits), bits, k)
    levels = reference.dequantize_weight(quantized, bits) / quantized.weight_scale[:, None]
    assert torch.equal(row_sum, levels.round().sum(dim=1).to(torch.int32))
    for act_bits in (8, 4):
        out = cpu_ops.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale, bias, bits, act_bits)
        expected = F.linear(
            reference.fake_quant_activation(x, act_bits), reference.dequantize_weight(quantized, bits), bias
        )
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_packed_linear_keeps_leading_dimensions_and_no_bias(cpu_ops):
    w, x = torch.randn(32, 8), torch.randn(2, 3, 8)
    quantized = reference.quantize_weight(w, 1, 1)
    kernel_weight, row_sum = cpu_ops.prepack_weight(_packed_rows(quantized.codes, 1), 1, 8)
    out = cpu_ops.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale.expand(32).contiguous(), None, 1, 8)
    expected = F.linear(reference.fake_quant_activation(x, 8), reference.dequantize_weight(quantized, 1))
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_refused(cpu_ops):
    with pytest.raises(RuntimeError, match="multiple of 16"):
        cpu_ops.prepack_weight(torch.zeros(8, 1, dtype=torch.uint8), 1, 8)
    with pytest.raises(RuntimeError, match="bytes per row"):
        cpu_ops.prepack_weight(torch.zeros(16, 3, dtype=torch.uint8), 1, 8)
    kernel_weight, row_sum = cpu_ops.prepack_weight(torch.zeros(16, 1, dtype=torch.uint8), 1, 8)
    with pytest.raises(RuntimeError, match="features"):
        cpu_ops.packed_linear(torch.randn(2, 12), kernel_weight, row_sum, torch.ones(16), None, 1, 8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_reference_prepack_is_the_kernel_layout_byte_for_byte(cpu_ops, bits):
    w = torch.randn(48, 36)
    packed = _packed_rows(reference.quantize_weight(w, bits, 48).codes, bits)
    expected_weight, expected_sum = cpu_ops.prepack_weight(packed, bits, 36)
    kernel_weight, row_sum = library.reference_prepack_weight(packed, bits, 36)
    assert torch.equal(kernel_weight, expected_weight) and torch.equal(row_sum, expected_sum)
    assert kernel_weight.shape == (48 // library.TILE_ROWS, 36 // library.TILE_INPUTS, library.block_bytes(bits))


def test_layout_constants_are_the_kernels():
    header = (builder.csrc_dir() / "include" / "xtc_layout.h").read_text()
    assert f"constexpr int64_t kTileRows = {library.TILE_ROWS};" in header
    assert f"constexpr int64_t kTileInputs = {library.TILE_INPUTS};" in header
    assert "return bits == 1 ? 8 : (bits == 2 ? 16 : 64);" in header
    assert [library.block_bytes(bits) for bits in (1, 2, 3, 8)] == [8, 16, 64, 64]
    assert "return bits <= 2 ? bits : (bits <= 4 ? 4 : 8);" in header
    assert [reference.storage_bits(bits) for bits in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]


def test_tile_layout_worked_example():
    levels = -torch.ones(16, 4, dtype=torch.int32)
    levels[0, 1] = 1  # row 0, input 1: bit 4 * 0 + 1
    levels[2, 3] = 1  # row 2, input 3: bit 11
    kernel_weight, row_sum = library.reference_prepack_weight(
        _packed_rows(((levels + 1) // 2).to(torch.uint8), 1), 1, 4
    )
    assert kernel_weight.tolist() == [[[0x02, 0x08, 0, 0, 0, 0, 0, 0]]]
    assert row_sum[0].item() == -2 and row_sum[2].item() == -2 and row_sum[1].item() == -4
    ternary = torch.zeros(16, 4, dtype=torch.int32)
    ternary[1, 0], ternary[1, 2] = 1, -1  # bits 4 and 6: nonzero mask byte 0 = 0x50, negative mask byte 8 = 0x40
    kernel_weight, _ = library.reference_prepack_weight(_packed_rows((ternary + 1).to(torch.uint8), 2), 2, 4)
    assert kernel_weight[0, 0].tolist() == [0x50] + [0] * 7 + [0x40] + [0] * 7


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_reference_packed_linear_is_the_qat_forward(bits, reference_kernels):
    w, x, bias = torch.randn(32, 20), torch.randn(5, 20), torch.randn(32)
    quantized = reference.quantize_weight(w, bits, 32)
    kernel_weight, row_sum = ops.prepack_weight(_packed_rows(quantized.codes, bits), bits, 20)
    out = ops.packed_linear(x, kernel_weight, row_sum, quantized.weight_scale, bias, bits, 8)
    expected = F.linear(reference.fake_quant_activation(x, 8), reference.dequantize_weight(quantized, bits), bias)
    assert torch.equal(out, expected)
