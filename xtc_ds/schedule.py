"""The compression schedule: which quantizer is on, and at how many bits, after N optimizer steps.

The legacy library only switched quantization on from inside the DeepSpeed engine, so a plain PyTorch
or HF Trainer loop silently trained unquantized. Here the schedule is a pure function of the step count:
a freshly injected model already is in its step-0 state, ``CompressionScheduler.step()`` advances it
from any loop, and ``xtc_ds.initialize`` makes ``engine.step()`` call it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import nn

from xtc_ds._log import log_rank_zero
from xtc_ds.config import CompressionConfig, WeightQuantParams, load_compression_config
from xtc_ds.nn.fake_quant import ActFakeQuantizer, WeightFakeQuantizer
from xtc_ds.nn.snip_mask import SnipMomentumMask, sum_over_ranks
from xtc_ds.pruning import pruning_masks, score_unscored
from xtc_ds.state import compression_state, require_same_config, unwrap_model
from xtc_ds.zero3 import full_parameters

__all__ = ["CompressionScheduler", "scheduled_bits", "quantizers", "apply_schedule"]


def scheduled_bits(params: WeightQuantParams, steps_since_offset: int) -> tuple[int, int]:
    """Bits in force ``steps_since_offset`` steps after ``schedule_offset``, and when they last changed.

    The legacy MoQ schedule: start at ``start_bits``; drop one bit once the step count reaches
    ``quantization_period``, then the period doubles (drops at P, 2P, 4P, ...; every step when P is 0),
    never below ``target_bits``.

    Returns:
        ``(bits, step_of_last_change)`` with steps counted from the offset (0 if bits never changed).
    """
    bits, drop_at, last_change = params.start_bits, params.quantization_period, 0
    while bits > params.target_bits and steps_since_offset >= drop_at:
        bits -= 1
        last_change = drop_at
        drop_at = drop_at * 2 if params.quantization_period > 0 else drop_at + 1
    return bits, last_change


QuantizerList = list[tuple[str, Any]]


def quantizers(root: nn.Module) -> tuple[QuantizerList, QuantizerList]:
    """``(name, quantizer)`` of every weight and every activation fake-quantizer under ``root``."""
    weight, act = [], []
    for name, module in root.named_modules():
        if isinstance(module, WeightFakeQuantizer):
            weight.append((name, module))
        elif isinstance(module, ActFakeQuantizer):
            act.append((name, module))
    return weight, act


def apply_schedule(
    config: CompressionConfig,
    weight: QuantizerList,
    act: QuantizerList,
    step: int,
    cleaned: bool = False,
    masks: Optional[list] = None,
) -> None:
    """Set every quantizer's switches (on/off, bits, fp16 mixing) and every pruning mask's (on/off; ``l1`` scores
    taken when it first switches on) to what the schedule gives after ``step`` steps."""
    wq, aq = config.weight_quantization, config.activation_quantization
    since = step - wq.shared_parameters.schedule_offset
    mixing = wq.shared_parameters.fp16_mixed_quantize
    for name, quantizer in weight:
        quantizer.enabled = since >= 0
        if since < 0:
            continue
        bits, last_change = scheduled_bits(wq.different_groups[quantizer.group].params, since)
        if bits != quantizer.bits and wq.shared_parameters.quantize_verbose:
            log_rank_zero(logging.INFO, f"xtc_ds: {name} now at {bits} bits (step {step})")
        quantizer.bits = bits
        if mixing.enabled:
            quantizer.real_ratio = max(0.0, 1.0 - mixing.quantize_change_ratio * (since - last_change))
    act_on = cleaned or step >= aq.shared_parameters.schedule_offset
    for _, quantizer in act:
        quantizer.enabled = act_on
    if cleaned or not masks:
        return  # redundancy_clean removed the masks
    for _, _, mask in masks:
        mask.enabled = step >= getattr(config, mask.technique).shared_parameters.schedule_offset
        if isinstance(mask, SnipMomentumMask):
            mask.recording = step < mask.schedule.last_step
    score_unscored(masks)


class CompressionScheduler:
    """Turns quantizers on at their ``schedule_offset`` and steps bits down per ``quantization_period``.

    Usable in any training loop::

        model = xtc_ds.init_compression(model, "ds_config.json")
        scheduler = xtc_ds.CompressionScheduler(model)
        for batch in loader:
            loss = model(**batch).loss
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            scheduler.step()

    Args:
        model: a model injected by ``init_compression``/``inject`` (or a DeepSpeed engine wrapping one).
        deepspeed_config: optional; if given it must match the config the model was injected with.
    """

    def __init__(self, model: nn.Module, deepspeed_config: Any = None) -> None:
        state = compression_state(model)
        if state is None:
            raise ValueError("CompressionScheduler needs a model prepared by xtc_ds.init_compression (or inject)")
        if deepspeed_config is not None:
            require_same_config(state, load_compression_config(deepspeed_config), "CompressionScheduler")
        self.state = state
        self.config = state.config
        self._weight, self._act = quantizers(unwrap_model(model))
        self._masks = pruning_masks(unwrap_model(model))
        self.step_count = 0
        self._apply()

    def step(self) -> None:
        """Advance by one optimizer step."""
        snip = [] if self.state.cleaned else [m for _, _, m in self._masks if isinstance(m, SnipMomentumMask)]
        sum_over_ranks(snip)  # before the schedule turns recording off: the step that ends it recorded too
        self.step_count += 1
        self.state.stepped = True
        self._apply()
        for mask in snip:
            mask.advance(self.step_count)
        self._copy_learned_scores()

    def _copy_learned_scores(self) -> None:
        """Keep a whole copy of every ``topk`` mask's scores: under ZeRO-3 they are partitioned, and
        :meth:`state_dict` may run on rank 0 alone (Trainer saves there), where no collective gather can."""
        if self.state.cleaned:
            return
        for _, _, mask in self._masks:
            if mask.learned and hasattr(mask.scores, "ds_id"):
                with full_parameters([mask.scores]):
                    mask.saved_scores = mask.scores.detach().cpu().clone()

    @property
    def settled(self) -> bool:
        """Whether the schedule has nothing left to change: every quantizer on (weights at their target bits,
        without fp16 mixing) and every pruning mask on at its final ratio. A dev score taken before then is not the
        score of the model ``redundancy_clean`` will bake."""
        if self.state.cleaned:
            return True
        weights = all(q.enabled and q.bits == q.target_bits and q.real_ratio == 0.0 for _, q in self._weight)
        masks = all(m.enabled and (bool(m.scored) or not isinstance(m, SnipMomentumMask)) for _, _, m in self._masks)
        return weights and masks and all(q.enabled for _, q in self._act)

    def _apply(self) -> None:
        apply_schedule(self.config, self._weight, self._act, self.step_count, self.state.cleaned, self._masks)

    def report(self) -> dict[str, Any]:
        """Where compression stands: the schedule step; per quantization group, its modules and their current bits
        (None while the group's quantization is off); per pruning mask, whether it is on and what it keeps."""
        groups: dict[str, dict[str, dict[str, Any]]] = {"weight": {}, "activation": {}}
        for kind, quantizer_list in (("weight", self._weight), ("activation", self._act)):
            for name, quantizer in quantizer_list:
                group = groups[kind].setdefault(quantizer.group, {"modules": [], "bits": None})
                group["modules"].append(name.rsplit(".", 1)[0])
                if quantizer.enabled:
                    group["bits"] = quantizer.bits
        pruning = {
            name: {"enabled": mask.enabled, "kept": mask.kept_units, "of": mask.units}
            for name, _, mask in ([] if self.state.cleaned else self._masks)
        }
        return {"step": self.step_count, "cleaned": self.state.cleaned, **groups, "pruning": pruning}

    def state_dict(self) -> dict[str, Any]:
        """Step count, calibrated static activation ranges (kept out of the model's state_dict) and the scores of
        scored pruning masks (also in the model's, but a Hugging Face folder reloaded as a plain model drops them)."""
        ranges = {
            name: torch.stack([q.x_min, q.x_max]).cpu() for name, q in self._act if q.static and bool(q.calibrated)
        }
        scores, momentum = {}, {}
        for name, _, mask in self._masks:
            whole = mask.saved_scores if hasattr(mask.scores, "ds_id") else mask.scores.detach().cpu().clone()
            gradual = isinstance(mask, SnipMomentumMask)
            if (bool(mask.scored) or gradual) and whole is not None:
                scores[name] = whole
            if gradual:
                momentum[name] = mask.momentum.detach().cpu().clone()
        return {
            "step": self.step_count,
            "activation_ranges": ranges,
            "pruning_scores": scores,
            "pruning_momentum": momentum,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count (and every switch derived from it), static activation ranges and pruning scores."""
        self.step_count = int(state_dict["step"])
        self.state.stepped = self.state.stepped or self.step_count > 0
        quantizers = dict(self._act)
        for name, pair in state_dict.get("activation_ranges", {}).items():
            if name not in quantizers:
                raise KeyError(
                    f"CompressionScheduler.load_state_dict: no activation quantizer named '{name}' in this model"
                )
            quantizer = quantizers[name]
            quantizer.x_min.copy_(pair[0])
            quantizer.x_max.copy_(pair[1])
            quantizer.calibrated.fill_(True)
        masks = {name: mask for name, _, mask in self._masks}
        for name, scores in state_dict.get("pruning_scores", {}).items():
            mask = masks.get(name)
            shape = None if mask is None else tuple(getattr(mask.scores, "ds_shape", mask.scores.shape))
            if shape != tuple(scores.shape):
                raise KeyError(
                    f"CompressionScheduler.load_state_dict: no pruning mask '{name}' of {tuple(scores.shape)}"
                )
            with full_parameters([mask.scores], modify=True), torch.no_grad():
                mask.scores.copy_(scores)
            mask.saved_scores = scores.clone()
            mask.scored.fill_(True)
        for name, momentum in state_dict.get("pruning_momentum", {}).items():
            mask = masks.get(name)
            if not isinstance(mask, SnipMomentumMask) or mask.momentum.shape != momentum.shape:
                raise KeyError(
                    f"CompressionScheduler.load_state_dict: no snip_momentum mask '{name}' of {tuple(momentum.shape)}"
                )
            mask.momentum.copy_(momentum)
            mask.scored.fill_(self.step_count >= mask.schedule.last_step)
        self._apply()
