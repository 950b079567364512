"""Defaults chosen from the data and the model: sequence lengths, epochs per phase, and the printed plan."""

import dataclasses

import pytest
import torch

from conftest import glue_task_dir, minilm_path
from xtc_ds.recipes.classification import plan


def test_training_length_is_the_99th_percentile_rounded_up_and_capped():
    lengths = torch.tensor([10] * 98 + [30, 500])
    assert plan.train_seq_length(lengths, 512) == 32  # 99th percentile ~30 -> 32
    assert plan.train_seq_length(torch.full((10,), 400), 512) == plan.SEQ_CAP
    assert plan.train_seq_length(torch.full((10,), 100), 64) == 64  # never beyond the model's positions
    assert plan.eval_seq_length(torch.tensor([5, 77, 12]), 512) == 77
    assert plan.eval_seq_length(torch.tensor([5, 700]), 512) == plan.SEQ_CAP


def test_epochs_fit_the_budget_scale_with_model_size_and_stay_in_range(monkeypatch):
    minilm = plan.model_cost(_Config(6, 384))
    assert minilm == 1.0 and plan.model_cost(_Config(12, 768)) == 8.0 and plan.model_cost(_Config(6, 384), 3) == 0.5
    small = plan.phase_plan("student", epoch_tokens=1e5, cost=1.0, epochs=None)
    large = plan.phase_plan("student", epoch_tokens=1e6, cost=1.0, epochs=None)
    assert small.chosen and small.epochs > large.epochs >= 1.0
    assert plan.phase_plan("student", epoch_tokens=1e3, cost=1.0, epochs=None).epochs == 20.0
    assert plan.phase_plan("teacher", epoch_tokens=1e9, cost=1.0, epochs=None).epochs == 0.5
    bigger_model = plan.phase_plan("student", epoch_tokens=1e6, cost=8.0, epochs=None)
    assert bigger_model.epochs < large.epochs
    given = plan.phase_plan("teacher", epoch_tokens=1e6, cost=1.0, epochs=3.0)
    assert (given.epochs, given.chosen) == (3.0, False)
    two_epochs = plan.STUDENT_MINUTES * 60 * plan._REFERENCE_TOKENS_PER_S["student"] / 2  # tokens of one epoch
    budgeted = plan.phase_plan("student", epoch_tokens=two_epochs, cost=1.0, epochs=None)
    assert budgeted.epochs == 2.0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the reference machine's threads
    assert budgeted.minutes == pytest.approx(plan.STUDENT_MINUTES, rel=1e-9)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert budgeted.minutes == pytest.approx(plan.STUDENT_MINUTES / 2, rel=1e-9)


def test_the_plan_says_what_runs_and_for_how_long():
    phases = [plan.phase_plan("teacher", 1e6, 1.0, None), plan.phase_plan("student", 1e6, 1.0, 2.0)]
    text = plan.describe("sst2", 67349, (56, 64), True, phases, "cpu")
    assert "sst2, 67349 training rows; max_seq_length 56 (dev 64; auto" in text
    assert "teacher: " in text and "(budget)" in text and "student: 2 epochs (flag), about" in text
    assert "min" not in plan.describe("sst2", 10, (8, 8), False, phases, "cuda")


def test_about_ten_dev_evaluations_per_phase_unless_a_flag_says():
    assert [plan.eval_every(steps) for steps in (8, 287, 924, 1052, 4208, 16832)] == [25, 50, 100, 125, 425, 500]
    assert plan.eval_every(924, flag=7) == 7
    phases = [dataclasses.replace(plan.phase_plan("student", 1e6, 1.0, 2.0), eval_steps=100, eval_estimated=True)]
    assert "student: 2 epochs (flag), dev about every 100 steps, about" in plan.describe(
        "mrpc", 3668, (88, 86), True, phases, "cpu"
    )


def test_small_training_sets_are_augmented_when_the_config_distils():
    small = plan.augment_plan(plan.AUGMENT_MAX_ROWS - 1, None, distils=True)
    assert small.variants == plan.AUGMENT_VARIANTS and "auto" in small.reason
    assert plan.augment_plan(plan.AUGMENT_MAX_ROWS, None, distils=True).variants == 0
    assert plan.augment_plan(100, None, distils=False).variants == 0
    assert plan.augment_plan(100, 0, distils=True).variants == 0
    assert plan.augment_plan(10**6, 5, distils=True).variants == 5  # a flag wins over the size rule
    on = plan.AugmentPlan(20, "auto: 3668 training rows, under 10000", seconds=75)
    phases = [plan.phase_plan("student", 1e6 * 21, 1.0, None, augmented=True)]
    text = plan.describe("mrpc", 3668, (88, 86), True, phases, "cpu", on)
    assert "augmentation: 20 variants per text (auto: 3668 training rows, under 10000), about 1 min" in text
    quick = plan.AugmentPlan(20, "auto: 400 training rows, under 10000", seconds=0.6)
    assert quick.line().endswith("under 10000), about 1 s")
    assert "off (auto: 67349 training rows" in plan.describe(
        "sst2", 67349, (48, 55), True, phases, "cpu", plan.augment_plan(67349, None, True)
    )
    assert phases[0].epochs < 1.0  # a budget smaller than one pass over the variants is less than one epoch
    assert plan.phase_plan("student", 1e6 * 21, 1.0, None).epochs == 1.0  # without variants: one epoch at least
    masked_lm = plan.augment_seconds("masked_lm", 4000, 40.0, 1.0, 20)
    assert masked_lm > plan.augment_seconds("embedding_neighbours", 4000, 40.0, 1.0, 20) > 0


def test_sst2_lengths_with_the_real_tokenizer():
    from transformers import AutoTokenizer

    from xtc_ds.recipes.classification.data.glue import get_task, read_glue_tsv

    folder, task = glue_task_dir("SST-2"), get_task("sst2")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    rows = read_glue_tsv(folder / "train.tsv", task)
    sample = [rows[i] for i in plan.sample_rows(len(rows), seed=42)]
    lengths = plan.token_lengths([row.text_a for row in sample], None, tokenizer)
    assert len(sample) == 20000 and plan.sample_rows(len(rows), 42) == plan.sample_rows(len(rows), 42)
    assert 8 < lengths.float().mean() < 20 and plan.train_seq_length(lengths, 512) <= 64


class _Config:
    def __init__(self, layers, hidden):
        self.num_hidden_layers, self.hidden_size = layers, hidden
