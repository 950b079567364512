"""Straight-through gradients reach the full-precision input unchanged."""

import torch

from xtc_ds.quant.reference import binarize, fake_quant_activation
from xtc_ds.quant.ste import straight_through


def test_ste_identity_gradient_weight():
    w = torch.randn(4, 6, requires_grad=True)
    out = straight_through(binarize, w, 2)
    grad = torch.randn(4, 6)
    out.backward(grad)
    assert torch.equal(w.grad, grad)
    assert torch.equal(out, binarize(w.detach(), 2))


def test_ste_identity_gradient_activation():
    x = torch.randn(2, 3, 8, requires_grad=True)
    (straight_through(fake_quant_activation, x, 8, True) * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
