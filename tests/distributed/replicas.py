"""What data-parallel ranks must agree on after training: the parameters and the quantized weights, as digests.

A loss all-reduced before it is recorded is equal on every rank whatever the ranks did; these digests differ as soon
as one rank's parameters or quantized codes differ from the other's by one bit.
"""

from __future__ import annotations

import hashlib

import torch


def replica_digests(model: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter (gathered under ZeRO-3) and of every quantized weight the forward pass uses."""
    import deepspeed

    params, codes = hashlib.sha256(), hashlib.sha256()
    with deepspeed.zero.GatheredParameters(list(model.parameters())), torch.no_grad():
        for name, param in model.named_parameters():
            params.update(name.encode() + param.detach().float().cpu().numpy().tobytes())
        quantized = [(name, m) for name, m in model.named_modules() if hasattr(m, "quantized_weight")]
        for name, module in quantized:
            codes.update(name.encode() + module.quantized_weight().float().cpu().numpy().tobytes())
    return {"params": params.hexdigest(), "codes": codes.hexdigest(), "quantized_modules": len(quantized)}


def assert_replicas_agree(first: dict, second: dict) -> None:
    """Two ranks' records: each trained on its own batch (their own losses differ) and both ended with the same
    parameters and quantized weights."""
    assert first["losses"] != second["losses"], "the ranks saw the same batches, or recorded a shared loss"
    assert first["replicas"]["quantized_modules"] > 0, first["replicas"]
    assert first["replicas"] == second["replicas"], (first["rank"], second["rank"])
