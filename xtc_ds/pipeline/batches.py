"""Deterministic, resumable micro-batches: the data position is a function of the optimizer step.

Epoch ``e`` shuffles with seed ``seed + e``; every rank takes an equal strided share (the tail that does not
fill a whole global batch is dropped, so ranks never disagree on the number of steps and hang). Resuming at
optimizer step ``s`` starts at epoch ``s // steps_per_epoch``, batch ``s % steps_per_epoch`` of that epoch:
nothing is re-read or skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["EpochBatches"]


class EpochBatches:
    """Micro-batch indices of one rank.

    Args:
        num_examples: training set size.
        micro_batch: examples per micro-batch per rank.
        grad_accum: micro-batches per optimizer step.
        rank, world_size: this process and the data-parallel size.
        seed: base seed of the per-epoch shuffles.
    Raises:
        ValueError: if the training set cannot fill one global batch.
    """

    def __init__(self, num_examples: int, micro_batch: int, grad_accum: int, rank: int, world_size: int, seed: int):
        global_batch = micro_batch * grad_accum * world_size
        if num_examples < global_batch:
            raise ValueError(
                f"{num_examples} training examples cannot fill one global batch of {global_batch} "
                f"({micro_batch} per device x {grad_accum} accumulation steps x {world_size} processes)"
            )
        self.num_examples = num_examples
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.steps_per_epoch = num_examples // global_batch

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, step_in_epoch)`` of optimizer step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def _shard(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        used = self.steps_per_epoch * self.micro_batch * self.grad_accum * self.world_size
        return order[:used][self.rank :: self.world_size]

    def iterate(self, start_step: int, total_steps: int) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """``(step, micro_batches)`` for optimizer steps ``start_step .. total_steps-1``, one shuffle per epoch."""
        cached_epoch, shard = None, None
        per_step = self.micro_batch * self.grad_accum
        for step in range(start_step, total_steps):
            epoch, in_epoch = self.position(step)
            if epoch != cached_epoch:
                cached_epoch, shard = epoch, self._shard(epoch)
            start = in_epoch * per_step
            yield (
                step,
                [
                    shard[start + a * self.micro_batch : start + (a + 1) * self.micro_batch]
                    for a in range(self.grad_accum)
                ],
            )
