"""One rank of a Hugging Face Trainer job with XtcTrainer (tests/integration/test_trainer_job.py).

The shape of a user's script: TrainingArguments first (so under ZeRO-3 Trainer's ``zero.Init`` partitions the
models as they load), the models from a folder, the data from CSV files through ``datasets``. After training every
rank writes ``<output_dir>/rank<R>.json``: the schedule step, Trainer's step and the distinct values of the weight
each quantized module's forward pass uses; then ``save_packed`` writes ``<output_dir>/packed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser


@dataclass
class JobArguments:
    teacher: str
    train_file: str
    validation_file: str
    resume: bool = False


def _levels(module: torch.nn.Module) -> int:
    """The most distinct values in one row of the weight the forward pass uses (gathered under ZeRO-3)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters([module.weight]), torch.no_grad():
        rows = module.quantized_weight().float().sort(dim=1).values
        return int(((rows.diff(dim=1) != 0).sum(dim=1) + 1).max())


def main() -> None:
    import datasets

    from xtc_ds.integrations import XtcTrainer, XtcTrainingArguments

    job, training_args = HfArgumentParser((JobArguments, XtcTrainingArguments)).parse_args_into_dataclasses()
    tokenizer = AutoTokenizer.from_pretrained(job.teacher)
    raw = datasets.load_dataset("csv", data_files={"train": job.train_file, "validation": job.validation_file})
    names = sorted(set(raw["train"]["label"]))

    def encode(rows):
        encoded = tokenizer(rows["text"], padding="max_length", truncation=True, max_length=16)
        encoded["labels"] = [names.index(label) for label in rows["label"]]
        return encoded

    data = raw.map(encode, batched=True, remove_columns=["text", "label"])
    labels = {"num_labels": len(names), "attn_implementation": "eager"}
    teacher = AutoModelForSequenceClassification.from_pretrained(job.teacher, **labels)
    student = AutoModelForSequenceClassification.from_pretrained(job.teacher, **labels)
    trainer = XtcTrainer(
        model=student,
        args=training_args,
        teacher_model=teacher,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
    )
    teacher_forwards = []
    teacher.register_forward_hook(lambda *_: teacher_forwards.append(1))
    trainer.train(resume_from_checkpoint=True if job.resume else None)
    rank = training_args.process_index
    record = {
        "schedule_step": trainer.xtc.scheduler.step_count,
        "global_step": trainer.state.global_step,
        "teacher_forwards": len(teacher_forwards),
        "levels": {name: _levels(m) for name, m in student.named_modules() if hasattr(m, "quantized_weight")},
    }
    out = Path(training_args.output_dir)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    trainer.save_packed(out / "packed")
    engine = trainer.model_wrapped  # the cleaned model, as packed; every rank runs it (ZeRO-3 gathers)
    engine.eval()  # DeepSpeedEngine.eval() returns None: not chainable
    rows = data["validation"][:4]
    with torch.no_grad():
        logits = engine(**{key: torch.tensor(rows[key]) for key in ("input_ids", "attention_mask")}).logits
    if rank == 0:
        inputs = {key: rows[key] for key in ("input_ids", "attention_mask")}
        (out / "trained_logits.json").write_text(json.dumps({"inputs": inputs, "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
