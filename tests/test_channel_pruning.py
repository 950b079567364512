"""``channel_pruning`` of Conv2d output channels (a ResNet): masks at the configured ratio and step, the related
BatchNorm2d and next Conv2d pruned with their owner, learned scores, cleaning that removes the channels without
changing the logits, packed exports of the smaller model, and the errors a wrong config gets."""

from __future__ import annotations

import pytest
import torch

import xtc_ds
from configs import resnet_channel_pruning
from models import tiny_resnet
from xtc_ds.config import ConfigError

CLASSIFIER_8BIT = {
    "shared_parameters": {"enabled": True, "schedule_offset": 0},
    "different_groups": {"wq1": {"params": {"start_bits": 8, "target_bits": 8}, "modules": ["classifier"]}},
}
PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 0])


def _config(method: str = "l1", related: bool = True, schedule_offset: int = 2) -> dict:
    channels = resnet_channel_pruning(method, schedule_offset, related)
    return {"compression_training": {"channel_pruning": channels, "weight_quantization": CLASSIFIER_8BIT}}


def _block(model, stage: int = 0):
    return model.resnet.encoder.stages[stage].layers[0].layer


def _train(model, steps: int, scheduler=None):
    """``steps`` SGD steps; pass the scheduler a previous call returned to continue its schedule."""
    scheduler = scheduler or xtc_ds.CompressionScheduler(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        model(pixel_values=PIXELS, labels=LABELS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return scheduler


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(pixel_values=PIXELS).logits


def test_l1_masks_switch_on_at_the_offset_and_zero_the_lowest_channels_and_their_batchnorm():
    model = xtc_ds.init_compression(tiny_resnet(), _config())
    block = _block(model, 1)
    conv, norm = block[0].convolution, block[0].normalization
    outputs = {}
    norm.register_forward_hook(lambda module, inputs, output: outputs.update(norm=output, conv=inputs[0]))
    _logits(model)
    assert not conv.channel_pruning.enabled and bool((outputs["norm"] != 0).any(dim=(0, 2, 3)).all())
    scheduler = _train(model, 1)
    assert not conv.channel_pruning.enabled
    _train(model, 1, scheduler)  # the second step's scheduler.step() reaches the offset: the L1 norms are taken then
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    assert conv.channel_pruning.enabled and conv.channel_pruning.kept_units == 8
    kept = conv.channel_pruning.kept()
    assert kept.tolist() == sorted(torch.argsort(norms, descending=True)[:8].tolist())
    _logits(model)
    pruned = sorted(set(range(16)) - set(kept.tolist()))
    for name in ("conv", "norm"):  # the batch norm of a zero channel would give beta - gamma * mean / std
        assert bool((outputs[name][:, pruned] == 0).all()), name
        assert bool((outputs[name][:, kept] != 0).any(dim=(0, 2, 3)).all()), name


def test_topk_scores_learn_and_the_cleaned_model_is_smaller_with_the_same_logits():
    model = xtc_ds.init_compression(tiny_resnet(), _config("topk", schedule_offset=1))
    conv = _block(model)[0].convolution
    start = conv.channel_pruning.scores.detach().clone()
    _train(model, 4)
    assert not torch.equal(conv.channel_pruning.scores.detach(), start)  # the straight-through mask's gradient
    masked = _logits(model)
    kept = conv.channel_pruning.kept()
    weights = conv.weight.detach()[kept].clone()
    xtc_ds.redundancy_clean(model)
    block = _block(model)
    assert (block[0].convolution.out_channels, block[0].normalization.num_features) == (4, 4)
    assert block[1].convolution.in_channels == 4 and tuple(block[1].convolution.weight.shape) == (8, 4, 3, 3)
    assert tuple(_block(model, 1)[0].convolution.weight.shape) == (8, 8, 3, 3)
    assert torch.equal(block[0].convolution.weight, weights)
    assert len(block[0].normalization.running_mean) == 4
    assert not hasattr(block[0].convolution, "channel_pruning")
    assert not block[0].convolution._forward_hooks and not block[1].convolution._forward_pre_hooks
    torch.testing.assert_close(_logits(model), masked, rtol=0, atol=1e-6)


def test_without_related_modules_cleaning_zeroes_the_channels_and_keeps_the_shapes():
    model = xtc_ds.init_compression(tiny_resnet(), _config(related=False, schedule_offset=0))
    _train(model, 1)
    masked = _logits(model)
    xtc_ds.redundancy_clean(model)
    conv = _block(model)[0].convolution
    assert conv.out_channels == 8 and int((conv.weight.abs().sum(dim=(1, 2, 3)) == 0).sum()) == 4
    torch.testing.assert_close(_logits(model), masked, rtol=0, atol=1e-6)


def test_the_packed_export_and_load_cleaned_rebuild_the_smaller_convolutions(tmp_path):
    model = xtc_ds.init_compression(tiny_resnet(), _config("topk", schedule_offset=0))
    _train(model, 2)
    xtc_ds.redundancy_clean(model)
    cleaned = _logits(model)
    folder = xtc_ds.export_packed(model, None, tmp_path / "packed")
    loaded = xtc_ds.load_packed(folder)
    assert tuple(_block(loaded)[0].normalization.running_var.shape) == (4,)
    assert _block(loaded)[1].convolution.in_channels == 4
    torch.testing.assert_close(_logits(loaded), cleaned, rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path / "final")
    unpacked = xtc_ds.load_cleaned(tmp_path / "final")
    assert _block(unpacked)[0].convolution.out_channels == 4 and _block(unpacked)[0].normalization.num_features == 4
    torch.testing.assert_close(_logits(unpacked), cleaned, rtol=0, atol=0)


def test_scores_resume_through_the_scheduler_state():
    model = xtc_ds.init_compression(tiny_resnet(), _config("topk", schedule_offset=0))
    state = _train(model, 2).state_dict()
    name = "resnet.encoder.stages.0.layers.0.layer.0.convolution.channel_pruning"
    assert tuple(state["pruning_scores"][name].shape) == (8,)
    torch.manual_seed(5)
    fresh = xtc_ds.init_compression(tiny_resnet(), _config("topk", schedule_offset=0))
    xtc_ds.CompressionScheduler(fresh).load_state_dict(state)
    assert torch.equal(
        _block(fresh)[0].convolution.channel_pruning.kept(), _block(model)[0].convolution.channel_pruning.kept()
    )


def test_revert_removes_the_masks_and_hooks():
    model = xtc_ds.init_compression(tiny_resnet(), _config(schedule_offset=0))
    xtc_ds.revert(model)
    block = _block(model)
    assert not hasattr(block[0].convolution, "channel_pruning")
    assert not block[0].normalization._forward_hooks and not block[1].convolution._forward_pre_hooks


@pytest.mark.parametrize(
    "related, message",
    [
        ([r"stages\.1\.layers\.0\.layer\.0\.normalization"], r"has 16 channels, but its module .* has 8 output"),
        ([r"no_such_module"], r"related_modules\[0\]\[0\]: 'no_such_module' matches no Linear, Conv2d or BatchNorm2d"),
    ],
)
def test_a_related_module_that_does_not_consume_the_channels_is_refused(related, message):
    config = _config()
    group = config["compression_training"]["channel_pruning"]["different_groups"]["cp1"]
    group["modules"] = [r"stages\.0\.layers\.0\.layer\.0\.convolution"]
    group["related_modules"] = [related]
    with pytest.raises(ConfigError, match=message):
        xtc_ds.init_compression(tiny_resnet(), config)


def test_a_grouped_convolution_is_refused_naming_it():
    model = tiny_resnet()
    _block(model)[0].convolution = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
    with pytest.raises(
        ConfigError, match=r"'resnet.encoder.stages.0.layers.0.layer.0.convolution' is a grouped Conv2d"
    ):
        xtc_ds.init_compression(model, _config())
