"""XtcTrainer in a plain (no DeepSpeed) Hugging Face Trainer on CPU: the KD loss is what trains, the schedule
steps once per optimizer step, checkpoints carry it, resume and load_best_model_at_end restore it, and
save_packed exports what the model computes. The launcher runs are in tests/integration/test_trainer_job.py."""

import json
import shutil

import pytest
import torch

from configs import recipe
from conftest import REPO_ROOT, trainer_resumes_under_this_torch
from models import tiny_bert
from xtc_ds import ConfigError, build_student, distillation_loss, load_packed
from xtc_ds.errors import CheckpointError

pytest.importorskip("accelerate")
from xtc_ds.integrations import SCHEDULER_FILE, XtcTrainer, XtcTrainingArguments  # noqa: E402


def _config_file(tmp_path, **changes):
    path = tmp_path / f"xtc{len(list(tmp_path.glob('xtc*.json')))}.json"  # one file per config
    path.write_text(json.dumps(recipe(**changes)))
    return str(path)


def _args(tmp_path, **kwargs):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        compression_config=_config_file(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=4,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(kwargs)
    return XtcTrainingArguments(**settings)


def _data(rows=32):
    import datasets

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 96, (rows, 10), generator=generator)
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 10] * rows, "labels": (ids[:, 0] % 2).tolist()}
    )


def _trainer(tmp_path, teacher=None, **kwargs):
    teacher = teacher or tiny_bert(layers=2)
    args = _args(tmp_path, **kwargs)
    student = build_student(teacher, args.compression())
    return XtcTrainer(model=student, args=args, teacher_model=teacher, train_dataset=_data(), eval_dataset=_data(8))


def test_kd_loss_trains_and_evaluation_keeps_the_task_loss(tmp_path):
    trainer = _trainer(tmp_path)
    batch = {key: torch.tensor(_data(4)[key]) for key in ("input_ids", "attention_mask", "labels")}
    features = {key: value for key, value in batch.items() if key != "labels"}
    student, teacher = trainer.model.train(), trainer.xtc.teacher
    kd = {"output_hidden_states": True, "output_attentions": True}
    torch.manual_seed(1)
    got = trainer.compute_loss(student, batch)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = distillation_loss(student(**features, **kd), teacher(**features, **kd), trainer.xtc.config)
    assert torch.allclose(got, expected)
    student.eval()
    assert torch.allclose(trainer.compute_loss(student, batch), student(**batch).loss)


def test_schedule_steps_once_per_optimizer_step(tmp_path):
    trainer = _trainer(tmp_path, gradient_accumulation_steps=2, max_steps=3)
    trainer.train()
    assert trainer.state.global_step == 3 and trainer.xtc.scheduler.step_count == 3


def test_checkpoints_carry_the_schedule_and_resume_restores_it(tmp_path):
    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert torch.load(checkpoint / SCHEDULER_FILE, weights_only=True)["step"] == 2
    assert json.loads((checkpoint / "xtc_compression.json").read_text())["compression_training"]
    if not trainer_resumes_under_this_torch():
        pytest.skip("this transformers cannot resume any Trainer checkpoint under torch >= 2.6 (rng_state.pth)")
    resumed = _trainer(tmp_path, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4 and resumed.xtc.scheduler.step_count == 4
    plain = tmp_path / "plain_checkpoint"
    shutil.copytree(checkpoint, plain)
    (plain / SCHEDULER_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{plain / SCHEDULER_FILE}: missing.*plain Trainer"):
        _trainer(tmp_path).train(resume_from_checkpoint=str(plain))


BEST_AT_END = dict(
    eval_strategy="steps",
    eval_steps=1,
    save_strategy="steps",
    save_steps=1,
    load_best_model_at_end=True,
    metric_for_best_model="loss",
)


def test_load_best_model_at_end_restores_the_best_checkpoints_schedule(tmp_path):
    trainer = _trainer(tmp_path, **{**BEST_AT_END, "greater_is_better": True})  # the highest eval loss: an early step
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and int(best.rsplit("-", 1)[1]) < trainer.state.global_step  # not the last step's state
    assert trainer.xtc.scheduler.step_count == int(best.rsplit("-", 1)[1])


def test_the_best_checkpoint_is_one_whose_compression_schedule_is_final(tmp_path):
    """Weights quantized from step 3: the lower losses of the unquantized steps 1-2 never make the best model."""
    config = recipe()
    config["compression_training"]["weight_quantization"]["shared_parameters"]["schedule_offset"] = 3
    path = tmp_path / "offset3.json"
    path.write_text(json.dumps(config))
    trainer = _trainer(tmp_path, compression_config=str(path), **BEST_AT_END)
    trainer.train()
    losses = {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}
    assert min(losses, key=losses.get) < 3  # the unquantized student scores best, and is not picked
    assert int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]) >= 3


def test_save_packed_exports_what_the_model_computes(tmp_path, reference_kernels):
    trainer = _trainer(tmp_path)
    trainer.train()
    folder = trainer.save_packed(tmp_path / "packed")
    model = trainer.model.eval()
    ids = torch.tensor(_data(4)["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = load_packed(folder, attn_implementation="eager")(input_ids=ids).logits
    assert torch.equal(got, expected)


def test_misuse_is_refused_naming_what_to_do(tmp_path):
    args = _args(tmp_path, compression_config=None)
    with pytest.raises(ConfigError, match="no compression_training section .* pass --compression_config"):
        XtcTrainer(model=tiny_bert(), args=args)
    args = _args(tmp_path)
    with pytest.raises(ConfigError, match="knowledge_distillation.enabled: true, but XtcTrainer got no teacher_model"):
        XtcTrainer(model=tiny_bert(), args=args)
    no_kd = _args(tmp_path, compression_config=_config_file(tmp_path, kd=False))
    with pytest.raises(ValueError, match="teacher_model= given but .* would not be used"):
        XtcTrainer(model=tiny_bert(), args=no_kd, teacher_model=tiny_bert())
    other = recipe(bits=2)["compression_training"]
    with pytest.raises(ConfigError, match="compression_config= differs from --compression_config .*target_bits"):
        XtcTrainer(
            model=tiny_bert(), args=args, teacher_model=tiny_bert(), compression_config={"compression_training": other}
        )


def test_the_example_ds_config_is_the_1bit_recipe():
    example = json.loads((REPO_ROOT / "examples" / "trainer" / "ds_config.json").read_text())
    shipped = {k: v for k, v in recipe()["compression_training"].items() if v.get("enabled", True) is not False}
    assert example["compression_training"] == shipped  # the same recipe, without its disabled layer reduction


def test_augmentation_adds_unlabelled_variants_that_kd_learns(tmp_path):
    """XtcTrainer(augmentation=...): the tokenized rows, then their variants (no label), cached in output_dir; a
    config without KD, which could not learn them, is refused."""
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models import save_tiny_teacher
    from xtc_ds.augment import NO_CLASS_LABEL, AugmentSettings

    save_tiny_teacher(tmp_path / "teacher", layers=2)
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher", attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    texts = ["the market rallied on bank profits", "the coach praised the team", "a new chip runs the robot"] * 4
    rows = datasets.Dataset.from_dict({"text": texts, "label": [0, 1, 0] * 4})
    train = rows.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=16), batched=True)
    settings = AugmentSettings(variants=4, prob=0.5, candidates=5, seed=0)

    def trainer(config, kd=True):
        args = _args(tmp_path, compression_config=config, max_steps=3)
        return XtcTrainer(
            model=build_student(teacher, args.compression()),
            args=args,
            teacher_model=teacher if kd else None,
            train_dataset=train,
            processing_class=tokenizer,
            augmentation=settings,
        )

    augmented = trainer(_config_file(tmp_path))
    dataset = augmented.train_dataset
    assert len(dataset) > len(train) and (tmp_path / "out" / "augmented" / "xtc_augmentation.json").is_file()
    variants = [dataset[i] for i in range(len(train), len(dataset))]
    assert {row["label"] for row in variants} == {NO_CLASS_LABEL}
    assert all(row["input_ids"] != train[dataset.edits.edit(i)[0]]["input_ids"] for i, row in enumerate(variants))
    batch = next(iter(augmented.get_train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"} and "text" not in batch
    augmented.train()
    assert augmented.state.global_step == 3

    with pytest.raises(ConfigError, match="augmentation=.*knowledge_distillation"):
        trainer(_config_file(tmp_path, kd=False), kd=False)
