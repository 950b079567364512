"""Straight-through estimators: reference forward, identity backward.

The gradient reaches the full-precision master weight (or activation) unchanged, as in the legacy
library and the XTC paper; scales receive no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["straight_through"]


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        ctx.num_args = len(args)
        return fn(x, *args)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        return (grad_output, None) + (None,) * ctx.num_args


def straight_through(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any) -> torch.Tensor:
    """``fn(x, *args)`` in the forward pass; ``d out / d x = identity`` in the backward pass.

    Args:
        fn: a reference quantizer from ``xtc_ds.quant.reference`` (or a kernel with the same contract).
        x: the tensor to quantize.
        *args: non-differentiable arguments of ``fn`` (bits, groups, ranges).
    """
    return _StraightThrough.apply(x, fn, *args)
