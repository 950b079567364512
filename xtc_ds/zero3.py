"""Whole weights under ZeRO-3: gather partitioned Parameters for the few places that must see all of a weight."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from xtc_ds._compat import invalidate_zero3_trace

__all__ = [
    "full_parameters",
    "partition_new_parameters",
    "can_partition_new_parameters",
    "forget_parameter_trace",
    "PARTITION_NEW_MIN_DEEPSPEED",
]


@contextlib.contextmanager
def full_parameters(params: Sequence[nn.Parameter], modify: bool = False) -> Iterator[None]:
    """Gather the ZeRO-3 partitioned ones of ``params`` for the block (every rank must enter it: the gather is
    collective); with ``modify``, what rank 0 writes is broadcast and re-partitioned on exit. No-op without ZeRO-3."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


PARTITION_NEW_MIN_DEEPSPEED = (0, 19)
"""Oldest DeepSpeed on which re-partitioning works: on 0.16.9 the engine's later gathers of such Parameters
returned corrupt data in about one run in three (tests/distributed/test_zero_multiprocess.py); 0.19.8 is exact."""


def can_partition_new_parameters() -> bool:
    """Whether this DeepSpeed re-partitions new Parameters reliably (:data:`PARTITION_NEW_MIN_DEEPSPEED`)."""
    import deepspeed

    version = tuple(int(part) for part in deepspeed.__version__.split(".")[:2])
    return version >= PARTITION_NEW_MIN_DEEPSPEED


def partition_new_parameters(module: nn.Module) -> None:
    """Partition ``module``'s plain Parameters the ZeRO-3 way (every rank must call this, holding the same values), so
    a ZeRO-3 engine's forward hooks, which expect every Parameter partitioned, keep working after a module was given
    new, smaller Parameters."""
    import deepspeed

    deepspeed.zero.Init(module=module)


def forget_parameter_trace(engine: object) -> None:
    """Make a ZeRO-3 engine re-record its Parameter fetch order. It records which Parameters each module fetches
    and checks every later forward against that record; once :func:`partition_new_parameters` gave modules new
    Parameters the record is stale, and the next forward fails with a "tracing error". (DeepSpeed invalidates it
    the same way when it re-registers its hooks.) No-op for other engines and models."""
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    coordinator = None if offload is None else offload.get_param_coordinator()
    if coordinator is not None:
        invalidate_zero3_trace(coordinator)
