"""XTC inside other training frameworks: Hugging Face ``Trainer`` (:class:`XtcTrainer`)."""

from xtc_ds.integrations.trainer import (
    COMPRESSION_FILE,
    SCHEDULER_FILE,
    XtcScheduleCallback,
    XtcTrainer,
    XtcTrainingArguments,
)

__all__ = ["XtcTrainer", "XtcTrainingArguments", "XtcScheduleCallback", "SCHEDULER_FILE", "COMPRESSION_FILE"]
