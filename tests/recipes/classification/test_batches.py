"""Micro-batches are a deterministic function of the step: shards are disjoint and resuming reproduces them."""

import pytest
import torch

from xtc_ds.recipes.classification.batches import EpochBatches


def test_ranks_get_disjoint_equal_shards_of_each_epoch():
    ranks = [EpochBatches(103, 4, 2, rank, 3, seed=7) for rank in range(3)]
    assert ranks[0].steps_per_epoch == 103 // 24 == 4
    seen = []
    for batches in ranks:
        steps = list(batches.iterate(0, 4))
        assert [s for s, _ in steps] == [0, 1, 2, 3]
        assert all(len(m) == 2 and all(len(b) == 4 for b in m) for _, m in steps)
        seen += [int(i) for _, micro in steps for b in micro for i in b]
    assert len(seen) == len(set(seen)) == 96


def test_resume_mid_epoch_reproduces_the_same_batches():
    batches = EpochBatches(50, 5, 1, 0, 1, seed=3)
    full = dict(batches.iterate(0, 25))
    resumed = dict(EpochBatches(50, 5, 1, 0, 1, seed=3).iterate(13, 25))
    assert all(torch.equal(full[s][0], resumed[s][0]) for s in resumed)
    assert batches.position(13) == (1, 3)


def test_epochs_reshuffle():
    batches = EpochBatches(40, 10, 1, 0, 1, seed=0)
    steps = dict(batches.iterate(0, 8))
    assert not torch.equal(torch.cat(steps[0] + steps[1]), torch.cat(steps[4] + steps[5]))
    assert sorted(torch.cat([steps[i][0] for i in range(4)]).tolist()) == list(range(40))


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="10 training examples cannot fill one global batch of 32"):
        EpochBatches(10, 16, 1, 0, 2, seed=0)


@pytest.mark.parametrize("grouped", [False, True], ids=["random", "grouped-by-length"])
def test_micro_batches_do_not_depend_on_how_ranks_and_accumulation_split_them(grouped):
    """2 ranks x 2 steps, 4 ranks x 1 and 1 process x 4 see the same micro-batches: a checkpoint resharded to
    another world size continues on the same data."""
    lengths = torch.randint(1, 64, (100,), generator=torch.Generator().manual_seed(2)) if grouped else None

    def micro_batches(accum: int, world: int) -> list[set]:
        per_step: dict[int, list] = {}
        for rank in range(world):
            for step, micro in EpochBatches(100, 4, accum, rank, world, 5, lengths).iterate(0, 12):
                per_step.setdefault(step, []).extend(frozenset(b.tolist()) for b in micro)
        return [set(per_step[step]) for step in sorted(per_step)]

    assert micro_batches(2, 2) == micro_batches(1, 4) == micro_batches(4, 1)


def _padded_over_real(batches: EpochBatches, lengths: torch.Tensor, steps: int) -> float:
    """Tokens after padding each micro-batch to its longest example, over the real tokens."""
    micro = [b for _, m in batches.iterate(0, steps) for b in m]
    return sum(int(lengths[b].max()) * len(b) for b in micro) / sum(int(lengths[b].sum()) for b in micro)


def test_grouped_batches_pad_little_and_still_cover_each_epoch_once():
    lengths = torch.randint(1, 64, (2000,), generator=torch.Generator().manual_seed(0))
    grouped = EpochBatches(2000, 8, 1, 0, 2, seed=4, lengths=lengths)
    steps = grouped.steps_per_epoch
    assert _padded_over_real(grouped, lengths, steps) < 1.1
    assert _padded_over_real(EpochBatches(2000, 8, 1, 0, 2, seed=4), lengths, steps) > 1.5
    for epoch in range(2):
        seen = [
            int(i)
            for rank in range(2)
            for _, micro in EpochBatches(2000, 8, 1, rank, 2, seed=4, lengths=lengths).iterate(
                epoch * steps, (epoch + 1) * steps
            )
            for b in micro
            for i in b
        ]
        assert len(seen) == len(set(seen)) == steps * 16


def test_grouped_batches_come_in_shuffled_order_and_resume_reproduces_them():
    lengths = torch.randint(1, 64, (800,), generator=torch.Generator().manual_seed(1))
    full = dict(EpochBatches(800, 4, 2, 0, 1, seed=9, lengths=lengths).iterate(0, 150))
    longest = [int(lengths[torch.cat(full[s])].max()) for s in range(100)]
    assert longest != sorted(longest, reverse=True)  # not longest-first through the epoch
    resumed = dict(EpochBatches(800, 4, 2, 0, 1, seed=9, lengths=lengths).iterate(117, 150))
    assert all(torch.equal(a, b) for s in resumed for a, b in zip(full[s], resumed[s]))


def test_lengths_of_another_dataset_are_refused():
    with pytest.raises(ValueError, match="99 example lengths given for 100 training examples"):
        EpochBatches(100, 4, 1, 0, 1, seed=0, lengths=torch.ones(99))
