"""The weight formats: each code's level, the code of 0, and the quantizer's codes staying in the alphabet."""

import re
from pathlib import Path

import pytest
import torch

from xtc_ds.quant.formats import BINARY, TERNARY, weight_format
from xtc_ds.quant.reference import dequantize_weight, quantize_weight

FORMATS = [(1, True), (2, True), (3, True), (4, True), (8, True), (3, False), (4, False), (8, False)]


def test_the_four_formats_and_their_levels_by_hand():
    codes = torch.tensor([0, 1, 2, 3], dtype=torch.uint8)
    assert BINARY.levels(codes[:2]).tolist() == [-1, 1] and BINARY.zero_code is None
    assert TERNARY.levels(codes[:3]).tolist() == [-1, 0, 1] and TERNARY.zero_code == 1
    three = weight_format(3)
    assert three.levels(torch.tensor([1, 4, 7])).tolist() == [-3, 0, 3] and three.zero_code == 4
    assert weight_format(3, symmetric=False).zero_code is None
    assert [weight_format(b).storage_bits for b in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert weight_format(2, symmetric=False) is TERNARY  # the extreme formats are symmetric by definition
    with pytest.raises(ValueError, match="zero point"):
        weight_format(4, symmetric=False).levels(codes)
    with pytest.raises(ValueError, match="1..8"):
        weight_format(9)


@pytest.mark.parametrize("bits, symmetric", FORMATS)
def test_quantizer_codes_stay_in_the_alphabet_and_levels_invert(bits, symmetric):
    form = weight_format(bits, symmetric)
    weight = torch.randn(8, 32)
    quantized = quantize_weight(weight, bits, 8, symmetric)
    assert int(quantized.codes.max()) < 2**bits
    if form.has_zero_point:
        assert form.kernel_layout is None and quantized.weight_zero_point is not None
        return
    levels = form.levels(quantized.codes)
    assert torch.equal(form.codes_of_levels(levels), quantized.codes.to(torch.int32))
    scale = quantized.weight_scale.repeat_interleave(32).reshape(8, 32)
    assert torch.equal(levels.float() * scale, dequantize_weight(quantized, bits))
    if form.zero_code is not None:
        assert int(form.levels(torch.tensor([form.zero_code]))) == 0


@pytest.mark.parametrize("bits, symmetric", FORMATS)
def test_masked_values_are_zero_where_pruned_and_on_the_grid_where_kept(bits, symmetric):
    form = weight_format(bits, symmetric)
    rows = torch.randn(4, 64)
    kept = torch.rand(4, 64) > 0.5
    values = form.masked_values(rows, kept)
    assert torch.equal(values[~kept], torch.zeros(int((~kept).sum())))
    levels_per_row = [row[mask].unique().numel() for row, mask in zip(values, kept)]
    assert max(levels_per_row) <= (2 if bits == 1 else 2**bits)


def test_no_bits_branch_outside_the_formats_module():
    package = Path(__file__).resolve().parents[2] / "xtc_ds"
    branch = re.compile(r"bits\W{0,3} (==|<=|<|>|>=) [1-3]\b")
    found = [
        f"{path.relative_to(package)}: {line.strip()}"
        for path in package.rglob("*.py")
        if path.name != "formats.py"
        for line in path.read_text(encoding="utf-8").splitlines()
        if branch.search(line)
    ]
    assert not found
