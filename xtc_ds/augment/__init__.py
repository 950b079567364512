"""Data augmentation for distillation on small tasks (TinyBERT's word replacement, as XTC uses on small GLUE sets).

Variants of the training rows carry no label: a student learns them from the teacher's outputs (the KD loss).
"""

from xtc_ds.augment.candidates import EmbeddingNeighbours, MaskedLMCandidates, load_candidate_source
from xtc_ds.augment.datasets import NO_CLASS_LABEL, AugmentedDataset, AugmentedRows, no_label
from xtc_ds.augment.generate import Augmenter, ListRows, PaddedRows, augment_rows, variant_edits
from xtc_ds.augment.store import AugmentedEdits, AugmentSettings, read_edits
from xtc_ds.augment.vocabulary import STOP_WORDS, WordVocabulary

__all__ = [
    "AugmentSettings",
    "AugmentedEdits",
    "Augmenter",
    "augment_rows",
    "AugmentedRows",
    "AugmentedDataset",
    "no_label",
    "NO_CLASS_LABEL",
    "read_edits",
    "variant_edits",
    "PaddedRows",
    "ListRows",
    "WordVocabulary",
    "STOP_WORDS",
    "EmbeddingNeighbours",
    "MaskedLMCandidates",
    "load_candidate_source",
]
