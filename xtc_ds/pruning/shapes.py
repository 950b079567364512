"""The shapes a pruned model stores, and the shrinking of a freshly built model to them at load."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from xtc_ds.config import ConfigError
from xtc_ds.matching import weight_shape

__all__ = ["file_shape", "pruned_shapes", "shrink_to", "fit_attention_heads"]


_SHRINKABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


def _kind(module: nn.Module) -> Optional[type]:
    return next((kind for kind in _SHRINKABLE if isinstance(module, kind)), None)


def _shape(module: nn.Module) -> Optional[list[int]]:
    """What :func:`shrink_to` rebuilds: ``[out, in]`` of a Linear or Conv2d, ``[channels]`` of a BatchNorm2d."""
    if isinstance(module, nn.Linear):
        return list(weight_shape(module))
    if isinstance(module, nn.Conv2d):
        return [module.out_channels, module.in_channels]
    if isinstance(module, nn.BatchNorm2d):
        return [module.num_features]
    return None


def file_shape(module: nn.Module, name: str, stored: Optional[dict[str, list[int]]]) -> Optional[list[int]]:
    """:func:`_shape` of ``module`` as the tensors ``stored`` (name -> shape, e.g. a safetensors header) give it, or
    as the module is when ``stored`` is None; None for other modules or when its weight is not stored."""
    kind = _kind(module)
    if kind is None:
        return None
    if stored is None:
        return _shape(module)
    shape = stored.get(f"{name}.running_mean" if kind is nn.BatchNorm2d else f"{name}.weight")
    shape = stored.get(f"{name}.weight") if shape is None else shape
    if shape is None:
        return None
    if kind is nn.Conv2d:
        return [shape[0], shape[1] * module.groups] if len(shape) == 4 else None
    return list(shape[:1]) if kind is nn.BatchNorm2d else list(shape)


def pruned_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``name -> shape`` (:func:`_shape`) of every Linear, Conv2d and BatchNorm2d smaller than the one
    ``model.config`` builds (those :func:`clean_pruned` shrank), which an export records so :func:`shrink_to` can
    rebuild them."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    with torch.device("meta"):
        reference = dict(type(model)(copy.deepcopy(config)).named_modules())
    shapes = {}
    for name, module in model.named_modules():
        built = reference.get(name)
        shape = _shape(module)
        if shape is not None and built is not None and _kind(built) is _kind(module) and shape != _shape(built):
            shapes[name] = shape
    return shapes


def _smaller(module: nn.Module, shape: list[int]) -> nn.Module:
    device = module.weight.device if getattr(module, "weight", None) is not None else None
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None, device=device)
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            shape[1],
            shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=device,
        )
    return nn.BatchNorm2d(
        shape[0], module.eps, module.momentum, module.affine, module.track_running_stats, device=device
    )


def shrink_to(model: nn.Module, shapes: dict[str, list[int]], where: str) -> None:
    """Replace each named Linear, Conv2d or BatchNorm2d of ``model`` by one of the recorded shape (same device and
    hyperparameters, no copy of weights: to be filled by ``load_state_dict``), and fit the attention modules' head
    counts.

    Raises:
        ConfigError: naming ``where`` when a name is not such a module of the model or a shape is not smaller.
    """
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        module = modules.get(name)
        current = None if module is None else _shape(module)
        if current is None or getattr(module, "groups", 1) != 1:
            raise ConfigError(
                f"{where}.{name}: not a Linear, ungrouped Conv2d or BatchNorm2d module of {type(model).__name__}"
            )
        fits = isinstance(shape, list) and len(shape) == len(current)
        if not (fits and all(type(d) is int and 1 <= d <= c for d, c in zip(shape, current))):
            raise ConfigError(f"{where}.{name}: {shape!r} (must be at most the model's {current})")
        model.set_submodule(name, _smaller(module, shape))
    fit_attention_heads(model)


_HEAD_COUNTS = ("num_attention_heads", "n_heads")  # BERT, RoBERTa, ELECTRA, DeBERTa; DistilBERT


def fit_attention_heads(model: nn.Module) -> None:
    """Tell every attention module whose query/key/value Linears lost whole heads how many it has left.

    transformers 5 reshapes by head size and needs nothing; transformers 4 reshapes by ``num_attention_heads``
    (DistilBERT: ``n_heads`` and ``dim``), which its own ``prune_heads`` updated the same way.
    """
    for module in model.modules():
        heads_attr = next((a for a in _HEAD_COUNTS if isinstance(getattr(module, a, None), int)), None)
        linears = [child for child in module.children() if isinstance(child, nn.Linear)]
        if heads_attr is None or not linears:
            continue
        heads = getattr(module, heads_attr)
        head_size = getattr(module, "attention_head_size", None) or getattr(module, "dim", 0) // heads
        width = min(linear.out_features for linear in linears)
        if not head_size or width % head_size or width // head_size == heads:
            continue
        setattr(module, heads_attr, width // head_size)
        if hasattr(module, "all_head_size"):
            module.all_head_size = width
        if heads_attr == "n_heads" and hasattr(module, "dim"):
            module.dim = width
