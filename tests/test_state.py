"""The compression state is found behind every wrapper, and config differences are named."""

import pytest
import torch
from torch import nn

from configs import recipe
from conftest import tiny_bert
from xtc_ds import ConfigError, init_compression, load_compression_config
from xtc_ds.state import compression_state, config_differences, require_same_config, unwrap_model

CONFIG = recipe(kd=False)


class _Forwarding(nn.Module):
    """Like DeepSpeedEngine: unknown attributes are looked up on the wrapped module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def test_state_is_found_behind_engines_compile_and_ddp_like_wrappers():
    model = init_compression(tiny_bert(), CONFIG)
    state = compression_state(model)
    assert state is not None
    for wrapped in (_Forwarding(model), torch.compile(model), _Forwarding(torch.compile(_Forwarding(model)))):
        assert unwrap_model(wrapped) is model
        assert compression_state(wrapped) is state
    assert compression_state(tiny_bert()) is None
    plain = tiny_bert()
    assert unwrap_model(_Forwarding(plain)) is plain


def test_differences_name_the_key_and_both_values():
    recorded = load_compression_config(CONFIG)
    other = load_compression_config(CONFIG)
    assert config_differences(recorded, other) == []
    changed = recipe(kd=False, bits=2)
    changed["compression_training"]["weight_quantization"]["shared_parameters"]["quantize_groups"] = 4
    differences = config_differences(recorded, load_compression_config(changed))
    assert "compression_training.weight_quantization.different_groups.wq1.params.target_bits: model 1, config 2" in (
        differences
    )
    assert any("shared_parameters.quantize_groups: model 1, config 4" in d for d in differences)
    model = init_compression(tiny_bert(), CONFIG)
    with pytest.raises(ConfigError, match="export_packed: the config differs.*target_bits: model 1, config 2"):
        require_same_config(compression_state(model), load_compression_config(changed), "export_packed")
