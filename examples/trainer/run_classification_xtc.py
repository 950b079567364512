#!/usr/bin/env python
"""Text classification with Hugging Face ``Trainer``, in the shape of transformers' ``run_classification.py``,
compressed with XTC. The lines marked ``# XTC`` are all that changes from a plain Trainer job (the README's
"Add XTC to an existing DeepSpeed or Trainer job" shows them as a diff):

    deepspeed examples/trainer/run_classification_xtc.py --deepspeed examples/trainer/ds_config.json \\
        --model_name_or_path TEACHER_DIR --train_file train.csv --validation_file dev.csv \\
        --output_dir out/trainer-xtc --do_train --do_eval

``--model_name_or_path`` is the fine-tuned model to compress: it is the KD teacher, and the student starts as its
copy (or, with ``layer_reduction``, as its chosen layers). Without DeepSpeed:
``python examples/trainer/run_classification_xtc.py --compression_config ds_configs/ds_xtc_1bit.json ...``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    set_seed,
)

import xtc_ds  # XTC
from xtc_ds.augment import AugmentSettings  # XTC
from xtc_ds.integrations import XtcTrainer, XtcTrainingArguments  # XTC

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "the fine-tuned model to compress"})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "CSV or JSON Lines training file"})
    validation_file: str = field(metadata={"help": "CSV or JSON Lines dev file, same columns"})
    text_column_names: str = field(default="sentence", metadata={"help": "one text column or two, comma-separated"})
    label_column_name: str = field(default="label")
    max_seq_length: int = field(default=128)
    augment: int = field(  # XTC
        default=0,
        metadata={"help": "variants per training row, learned by KD from the teacher (TinyBERT uses 20; 0: none)"},
    )


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, XtcTrainingArguments))  # XTC
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s", handlers=[logging.StreamHandler()])
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)

    extension = data_args.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
    raw = datasets.load_dataset(
        extension, data_files={"train": data_args.train_file, "validation": data_args.validation_file}
    )
    label_list = sorted(set(raw["train"][data_args.label_column_name]))
    label_to_id = {label: i for i, label in enumerate(label_list)}

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(label_list),
        id2label={i: str(label) for label, i in label_to_id.items()},
        label2id={str(label): i for label, i in label_to_id.items()},
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    teacher = AutoModelForSequenceClassification.from_pretrained(  # XTC
        model_args.model_name_or_path,
        config=config,
        attn_implementation="eager",  # XTC: KD reads attention maps
    )  # XTC
    model = xtc_ds.build_student(teacher, training_args.compression())  # XTC

    text_columns = data_args.text_column_names.split(",")

    def preprocess(rows):
        texts = [rows[column] for column in text_columns]
        result = tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)
        result["labels"] = [label_to_id[label] for label in rows[data_args.label_column_name]]
        return result

    with training_args.main_process_first(desc="tokenize"):
        encoded = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=1) == prediction.label_ids).mean())}

    augmentation = None  # XTC
    if data_args.augment:  # XTC
        augmentation = AugmentSettings(variants=data_args.augment, seed=training_args.seed)  # XTC
    trainer = XtcTrainer(  # XTC
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        teacher_model=teacher,  # XTC
        augmentation=augmentation,  # XTC: unlabelled variants of the training rows, learned by KD
    )
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_packed(os.path.join(training_args.output_dir, "packed"))  # XTC


if __name__ == "__main__":
    sys.exit(main())
