"""``channel_pruning`` of Conv2d output channels, applied through forward hooks so the user's Conv2d and BatchNorm2d
modules keep their classes.

The owner Conv2d's pruned output channels are zeroed, a related BatchNorm2d's pruned channels are zeroed after
normalization (the legacy library left them at ``beta - gamma * mean / std``, which the next layer consumed, so its
cleaned model differed from the masked one), and a related Conv2d's pruned input channels are zeroed before it reads
them (whatever the activation in between makes of a zero). So the model :func:`xtc_ds.redundancy_clean` shrinks
computes exactly what the masked one computed. ``topk`` scores get their straight-through gradient after the
related BatchNorm2d where there is one (a BatchNorm2d cancels any scale given to a channel before it), else at the
Conv2d's output.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from xtc_ds.nn.structure_mask import COLUMNS, ROWS, AxisMask

__all__ = ["CHANNEL_MODULES", "add_channel_mask", "remove_channel_masks", "channel_vector", "kept_channels"]

CHANNEL_MODULES = (nn.Conv2d, nn.BatchNorm2d)
"""Modules that take a channel mask through hooks (a related ``nn.Linear`` takes it as a column mask instead)."""


def channel_vector(axis_mask: AxisMask, size: int, like: torch.Tensor) -> torch.Tensor:
    """0/1 per channel; for the owner of a ``topk`` mask, with the straight-through gradient to its scores."""
    kept, ste = axis_mask.mask()
    vector = torch.zeros(size, dtype=like.dtype, device=like.device).index_fill_(0, kept.to(like.device), 1.0)
    if ste is not None and axis_mask.owned:
        vector = vector + (ste - ste.detach()).to(like)
    return vector


def kept_channels(module: nn.Module, axis: int) -> Optional[torch.Tensor]:
    """Indices of the channels the enabled masks along ``axis`` keep (None: no such mask)."""
    for axis_mask in getattr(module, "channel_masks", ()):
        if axis_mask.axis == axis and axis_mask.mask.enabled:
            return axis_mask.mask.kept()
    return None


def _mask_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    for axis_mask in module.channel_masks:
        if axis_mask.axis == ROWS and axis_mask.mask.enabled:
            output = output * channel_vector(axis_mask, output.shape[1], output)[None, :, None, None]
    return output


def _mask_input(module: nn.Module, inputs: tuple) -> tuple:
    x, *rest = inputs
    for axis_mask in module.channel_masks:
        if axis_mask.axis == COLUMNS and axis_mask.mask.enabled:
            keep = channel_vector(axis_mask, x.shape[1], x)[None, :, None, None]
            x = x * keep + (x - x.detach()) * (1.0 - keep)  # pruned inputs pass their gradient straight through
    return (x, *rest)


def add_channel_mask(module: nn.Module, axis_mask: AxisMask) -> None:
    """Apply ``axis_mask`` to ``module``'s output channels (``ROWS``: an owner Conv2d or a related BatchNorm2d) or
    input channels (``COLUMNS``: a related Conv2d); the hooks are registered once per module."""
    masks = getattr(module, "channel_masks", ())
    if not masks:
        module.register_forward_hook(_mask_output)
        module.register_forward_pre_hook(_mask_input)
    module.channel_masks = (*masks, axis_mask)


def remove_channel_masks(module: nn.Module) -> None:
    """Take the masks and their hooks off ``module`` (after cleaning, or when reverting the injection)."""
    for hooks, hook in ((module._forward_hooks, _mask_output), (module._forward_pre_hooks, _mask_input)):
        for key in [k for k, fn in hooks.items() if fn is hook]:
            del hooks[key]
    module.__dict__.pop("channel_masks", None)
