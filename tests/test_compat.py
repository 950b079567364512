"""The private internals ``xtc_ds._compat`` relies on still exist in the installed transformers, accelerate,
DeepSpeed and pandas; a failure names the one that changed (the versions checked are ``_compat.CHECKED_ON``)."""

import inspect
import io

import pytest

from xtc_ds import _compat
from xtc_ds.distributed import SHM_OP


def test_the_trainer_hooks_xtc_trainer_overrides_exist_with_their_parameters():
    from transformers import Trainer

    from xtc_ds.integrations import XtcTrainer

    for name, leading in _compat.TRAINER_HOOKS.items():
        method = getattr(Trainer, name, None)
        assert method is not None, f"transformers.Trainer.{name} is gone"
        parameters = tuple(inspect.signature(method).parameters)[: len(leading)]
        assert parameters == leading, f"transformers.Trainer.{name}{parameters}: XtcTrainer expects {leading}"
        assert name in vars(XtcTrainer), f"XtcTrainer no longer overrides {name}: drop it from TRAINER_HOOKS"


def test_a_model_built_from_a_config_runs_the_attention_set_on_it():
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    _compat.set_attn_implementation(config, "eager")
    model = BertModel(config)
    assert _compat.attn_implementation(model.config) == "eager"


def test_deepspeed_internals():
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    for owner, name in (
        (PartitionedParameterCoordinator, "_invalidate_trace"),
        (PartitionedParameterCoordinator, "is_invalid_trace"),
        (DeepSpeedEngine, "_zero3_consolidated_16bit_state_dict"),
    ):
        assert callable(getattr(owner, name, None)), f"deepspeed {owner.__name__}.{name} is gone"
    ops = _compat.deepspeed_compatible_ops()
    assert isinstance(ops, dict) and SHM_OP in ops, f"deepspeed.ops.__compatible_ops__ has no {SHM_OP}"


def test_accelerate_partial_state_fields():
    from accelerate.state import PartialState

    source = inspect.getsource(PartialState)
    for field in ("backend", "num_processes", "process_index", "local_process_index"):
        assert f"self.{field} =" in source, f"accelerate PartialState no longer sets {field}"


def test_pandas_parser_error_text():
    import pandas

    with pytest.raises(pandas.errors.ParserError) as raised:
        pandas.read_csv(io.StringIO("a,b\n1,2\n3,4,5\n"))
    assert _compat.parser_field_counts(str(raised.value)) == (2, 3, 3), str(raised.value)
    assert _compat.parser_field_counts("some other error") is None
