"""The CPU packed linear kernel agrees with the reference (dequantize, fake-quantize the input, matmul)."""

import pytest
import torch
import torch.nn.functional as F

from xtc_ds import ops
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


def test_kernel_is_chosen_for_float32_cpu_inputs(cpu_ops):
    assert ops.kernel_for(torch.zeros(1)) is cpu_ops and hasattr(cpu_ops, "packed_linear")
