"""Quantizer math against hand-computed values, level counts and per-group scales."""

import pytest
import torch

from xtc_ds.quant import reference
from xtc_ds.quant.reference import (
    binarize,
    fake_quant_activation,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    fake_quant_weight,
    ternarize,
)


def test_binarize_hand_computed_single_group():
    w = torch.tensor([[0.5, -1.0], [0.0, 2.5]])
    alpha = (0.5 + 1.0 + 0.0 + 2.5) / 4  # 1.0
    assert torch.equal(binarize(w), torch.tensor([[alpha, -alpha], [alpha, alpha]]))  # sign(0) -> +1


def test_binarize_per_group_scales():
    w = torch.tensor([[1.0, -3.0], [0.5, -0.5]])
    out = binarize(w, num_groups=2)
    assert torch.equal(out, torch.tensor([[2.0, -2.0], [0.5, -0.5]]))


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_binarize_has_exactly_two_levels_per_group(groups):
    w = torch.randn(16, 24)
    w[0, 0] = 0.0
    out = binarize(w, groups).reshape(groups, -1)
    for row, orig in zip(out, w.reshape(groups, -1)):
        levels = row.unique()
        assert levels.numel() == 2
        assert torch.allclose(levels.abs(), orig.abs().mean().expand(2))


def test_ternarize_hand_computed():
    # threshold 0.7 * mean|w| = 0.7 * 1.0583 = 0.7408 keeps 1.0, -2.0, 3.0; their mean magnitude 2.0 is the scale
    w = torch.tensor([1.0, -2.0, 0.1, 0.05, 3.0, -0.2])
    assert torch.equal(ternarize(w), torch.tensor([2.0, -2.0, 0.0, 0.0, 2.0, -0.0]))
    # threshold 0.7 * 0.4333 = 0.3033 drops 0.3 (a factor of 0.6 or a >= test would keep it and give 0.4333)
    assert torch.equal(ternarize(torch.tensor([0.5, -0.5, 0.3])), torch.tensor([0.5, -0.5, 0.0]))


def test_ternarize_three_levels_per_group_and_zero_group():
    w = torch.randn(8, 32)
    w[4:] = 0.0
    out = ternarize(w, num_groups=2).reshape(2, -1)
    assert out[0].unique().numel() == 3
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_symmetric_grid_hand_computed():
    rows = torch.tensor([[-1.0, 0.26, 0.5, 1.0]])
    out = fake_quant_symmetric(rows, bits=3)  # q_max = 3, scale = 1/3
    assert torch.allclose(out, torch.tensor([[-1.0, 1 / 3, 2 / 3, 1.0]]))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_symmetric_levels_count_and_max_exact(bits):
    w = torch.randn(64, 64)
    out = fake_quant_weight(w, bits, num_groups=1, symmetric=True)
    assert out.unique().numel() <= 2**bits - 1
    assert out.abs().max() == pytest.approx(w.abs().max().item(), rel=1e-6)  # the max is representable
    scale = w.abs().max() / (2 ** (bits - 1) - 1)
    assert (out - w).abs().max() <= scale / 2 + 1e-6


def test_asymmetric_hand_computed_and_zero_exact():
    rows = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    out = fake_quant_asymmetric(rows, bits=2)  # scale 1, zero point 0: exact
    assert torch.equal(out, rows)
    rows = torch.tensor([[-1.0, 0.0, 0.4, 2.0]])
    out = fake_quant_asymmetric(rows, bits=2)  # scale 1, zero point 1
    assert torch.equal(out, torch.tensor([[-1.0, 0.0, 0.0, 2.0]]))


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_levels_count(bits):
    out = fake_quant_weight(torch.rand(32, 32) + 0.5, bits, num_groups=4, symmetric=False)
    for group in out.reshape(4, -1):
        assert group.unique().numel() <= 2**bits


def test_stochastic_rounding_is_unbiased():
    rows = torch.full((1, 200_000), 0.3)
    rows[0, 0] = 1.0  # sets the scale: 3-bit grid step 1/3
    out = fake_quant_symmetric(rows, 3, stochastic=True)
    assert out[0, 1:].unique().tolist() == pytest.approx([0.0, 1 / 3])
    assert out[0, 1:].mean().item() == pytest.approx(0.3, abs=2e-3)


def test_weight_groups_must_divide():
    with pytest.raises(ValueError, match="equal groups"):
        fake_quant_weight(torch.randn(3, 5), 1, num_groups=2)


def test_activation_per_token_scales():
    x = torch.tensor([[[1.0, -0.5, 0.25], [100.0, 50.0, -25.0]]])
    out = fake_quant_activation(x, bits=8)
    for token, orig in zip(out[0], x[0]):
        scale = orig.abs().max() / 127
        assert torch.allclose(token / scale, torch.round(orig / scale))
    assert out.shape == x.shape


def test_activation_static_range_clips():
    x = torch.tensor([[-4.0, 0.5, 4.0]])
    out = fake_quant_activation(x, 8, x_min=torch.tensor(-1.0), x_max=torch.tensor(1.0))
    assert out[0, 0] == pytest.approx(-1.0) and out[0, 2] == pytest.approx(1.0)
    assert out[0, 1] == pytest.approx(round(0.5 * 127) / 127)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_dtype_preserved_and_matches_fp32(dtype):
    w = torch.randn(8, 16).to(dtype)
    out = binarize(w, 8)
    assert out.dtype == dtype
    assert torch.equal(out, binarize(w.float(), 8).to(dtype))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_activation_levels_per_token(bits, symmetric):
    x = torch.randn(3, 5, 64) * 4 + 1
    out = fake_quant_activation(x, bits, symmetric=symmetric)
    for token, orig in zip(out.reshape(-1, 64), x.reshape(-1, 64)):
        assert token.unique().numel() <= (2**bits - 1 if symmetric else 2**bits)
        lo, hi = min(orig.min().item(), 0.0), max(orig.max().item(), 0.0)
        step = (2 * orig.abs().max().item() / (2**bits - 2)) if symmetric else (hi - lo) / (2**bits - 1)
        assert (token - orig).abs().max().item() <= step / 2 + 1e-5


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("groups", [1, 4, 64])
def test_codes_and_scales_dequantize_to_the_fake_quantized_weight(bits, symmetric, groups):
    w = torch.randn(64, 48)
    w[0, 0] = 0.0
    quantized = reference.quantize_weight(w, bits, groups, symmetric)
    assert quantized.codes.dtype == torch.uint8 and quantized.codes.shape == w.shape
    assert int(quantized.codes.max()) < 2**bits
    assert quantized.weight_scale.shape == (groups,)
    assert (quantized.weight_zero_point is not None) == (bits > 2 and not symmetric)
    assert torch.equal(
        reference.dequantize_weight(quantized, bits), reference.fake_quant_weight(w, bits, groups, symmetric)
    )


def test_binary_and_ternary_codes_by_hand():
    w = torch.tensor([[0.5, -1.5, 0.0, 2.0]])
    binary = reference.quantize_weight(w, 1, 1)
    assert binary.codes.tolist() == [[1, 0, 1, 1]] and binary.weight_scale.item() == pytest.approx(1.0)
    ternary = reference.quantize_weight(w, 2, 1)  # threshold 0.7 * 1.0: keeps -1.5 and 2.0, scale 1.75
    assert ternary.codes.tolist() == [[1, 0, 1, 2]] and ternary.weight_scale.item() == pytest.approx(1.75)


def test_storage_bits():
    assert [reference.storage_bits(b) for b in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="bits"):
        reference.storage_bits(9)
