"""QAT versions of ``nn.Linear`` and transformers' ``Conv1D`` that reuse the original Parameters."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from xtc_ds.nn.fake_quant import ActFakeQuantizer, WeightFakeQuantizer
from xtc_ds.nn.sparse_mask import sparse_quantized
from xtc_ds.nn.structure_mask import AxisMask, kept_bias, pruned_weight

__all__ = ["XtcQATLinear", "XtcQATConv1D", "CONV1D", "is_conv1d"]


def _conv1d_type() -> Optional[type]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


CONV1D: Optional[type] = _conv1d_type()
"""transformers' ``Conv1D`` (GPT-2's linear layer, weight stored transposed), or None without transformers."""


def is_conv1d(module: nn.Module) -> bool:
    """True for a transformers ``Conv1D`` (or a subclass, such as :class:`XtcQATConv1D`)."""
    return CONV1D is not None and isinstance(module, CONV1D)


def _adopt(new: nn.Module, old: nn.Module, weight_quantizer, act_quantizer) -> nn.Module:
    """Give ``new`` the Parameters (same objects, nothing copied), mode and quantizers of ``old``."""
    new.weight = old.weight
    new.bias = old.bias
    new.weight_quantizer = weight_quantizer
    new.act_quantizer = act_quantizer
    new.train(old.training)
    return new


class XtcQATLinear(nn.Linear):
    """``nn.Linear`` whose forward fake-quantizes its input and weight, and applies structured pruning masks.

    Build with :meth:`from_linear`; ``state_dict()`` keys stay ``weight`` and ``bias`` (a pruning mask it owns
    adds its ``sparse_pruning.*`` / ``row_pruning.*`` / ``head_pruning.*`` scores).
    """

    weight_quantizer: Optional[WeightFakeQuantizer]
    act_quantizer: Optional[ActFakeQuantizer]
    pruning: tuple[AxisMask, ...] = ()

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_quantizer: Optional[WeightFakeQuantizer] = None,
        act_quantizer: Optional[ActFakeQuantizer] = None,
    ) -> XtcQATLinear:
        """Wrap ``linear``, sharing its ``weight``/``bias`` Parameters."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        return _adopt(new, linear, weight_quantizer, act_quantizer)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it, shape (out_features, in_features)."""
        sparse = getattr(self, "sparse_pruning", None)
        if sparse is not None and sparse.enabled:
            weight = sparse_quantized(self.weight, self.weight_quantizer, sparse)
        elif any(axis_mask.mask.enabled for axis_mask in self.pruning):
            return pruned_weight(self.weight, self.weight_quantizer, self.pruning).weight
        else:
            weight = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        if getattr(sparse, "recording", False) and torch.is_grad_enabled():
            return sparse.watch(weight, self.weight)  # snip_momentum: scores from this weight's gradient
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(axis_mask.mask.enabled for axis_mask in self.pruning):
            return self._pruned_forward(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def _pruned_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pruned input columns are zeroed before activation quantization, so per-token ranges see only the
        inputs the cleaned (smaller) Linear will see (their gradient passes straight through); rows an owned mask
        prunes give 0, bias included."""
        pruned = pruned_weight(self.weight, self.weight_quantizer, self.pruning)
        inputs = x
        if pruned.cols is not None:
            keep = torch.zeros(self.in_features, dtype=x.dtype, device=x.device).index_fill_(0, pruned.cols, 1.0)
            x = x * keep + (x - x.detach()) * (1.0 - keep)
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        out = F.linear(x, pruned.weight, kept_bias(self.bias, pruned.zeroed_rows))
        if pruned.column_gradient is not None and torch.is_grad_enabled():
            out = out + F.linear(inputs, pruned.column_gradient)
        return out

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the same Parameters (no quantization)."""
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features, linear.out_features = self.in_features, self.out_features
        linear.weight, linear.bias = self.weight, self.bias
        return linear.train(self.training)


def _make_qat_conv1d() -> Optional[type]:
    conv1d = CONV1D
    if conv1d is None:
        return None

    class XtcQATConv1D(conv1d):
        """transformers ``Conv1D`` (weight stored (in_features, out_features)) with fake quantization.

        Groups are taken over the transposed (out_features, in_features) weight, so a Conv1D is quantized
        exactly like the equivalent ``nn.Linear``.
        """

        @classmethod
        def from_conv1d(cls, module: nn.Module, weight_quantizer=None, act_quantizer=None) -> XtcQATConv1D:
            new = cls.__new__(cls)
            nn.Module.__init__(new)
            new.nf = module.nf
            new.nx = getattr(module, "nx", module.weight.shape[0])
            return _adopt(new, module, weight_quantizer, act_quantizer)

        def quantized_weight(self) -> torch.Tensor:
            """The weight as the forward pass uses it, in Conv1D layout (in_features, out_features)."""
            if self.weight_quantizer is None:
                return self.weight
            return self.weight_quantizer(self.weight.t()).t()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.act_quantizer is not None:
                x = self.act_quantizer(x)
            size_out = x.size()[:-1] + (self.nf,)
            out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.quantized_weight())
            return out.view(size_out)

        def to_conv1d(self) -> nn.Module:
            plain = conv1d.__new__(conv1d)
            nn.Module.__init__(plain)
            plain.nf, plain.nx = self.nf, self.nx
            plain.weight, plain.bias = self.weight, self.bias
            return plain.train(self.training)

    return XtcQATConv1D


XtcQATConv1D = _make_qat_conv1d()
