"""Replacement candidates for a word: the teacher checkpoint's masked-LM head, else its input-embedding neighbours.

TinyBERT asks BERT's masked-LM head for the K likeliest words at a masked position and falls back to GloVe
neighbours. Nothing may be downloaded here, and many teachers (the default all-MiniLM-L6-v2 among them) ship no
masked-LM head, so the fallback is the nearest words of the checkpoint's own input embeddings (cosine
similarity): offline, and in the teacher's own vocabulary, for every model.

Both sources return, for each replaceable position of a row, ``K`` token ids that are whole words
(:class:`~xtc_ds.augment.vocabulary.WordVocabulary`) other than the word itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

from xtc_ds.augment.vocabulary import WordVocabulary
from xtc_ds.errors import ModelError

__all__ = ["Row", "CandidateSource", "EmbeddingNeighbours", "MaskedLMCandidates", "load_candidate_source"]

MASK_SHARE = 0.15
"""Share of a row's replaceable words the masked-LM source masks in one forward pass (BERT's pre-training masking
rate): each word is still predicted from a context that is 85 % intact, at a seventh of the passes that masking
one word at a time (as TinyBERT does) would take."""


@dataclass(frozen=True)
class Row:
    """One encoded row as training sees it (no padding) and its replaceable positions."""

    input_ids: torch.Tensor
    token_type_ids: Optional[torch.Tensor]
    positions: torch.Tensor


class CandidateSource(Protocol):
    """Where replacement words come from."""

    kind: str
    fingerprint: str

    def candidates(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        """For each row, a ``[len(row.positions), K]`` tensor of candidate token ids."""
        ...


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


class EmbeddingNeighbours:
    """The ``k`` whole words nearest to a word in the input-embedding matrix (cosine similarity).

    Candidates depend on the word only, so they are computed once per distinct word and kept.
    """

    kind = "embedding_neighbours"

    def __init__(self, embeddings: torch.Tensor, vocabulary: WordVocabulary, k: int) -> None:
        weight = embeddings.detach().float()
        self.unit = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.pool = torch.nonzero(vocabulary.words).flatten()
        if len(self.pool) <= k:
            raise ModelError(
                f"the vocabulary has {len(self.pool)} whole-word tokens; augmentation needs more than {k} candidates"
            )
        self.k = k
        self.table = torch.full((len(weight), k), -1, dtype=torch.long)
        self.fingerprint = f"{self.kind}:{_tensor_digest(weight)}:{k}"

    def _fill(self, tokens: torch.Tensor) -> None:
        missing = tokens[self.table[tokens, 0] < 0].unique()
        for chunk in missing.split(1024):
            similarity = self.unit[chunk] @ self.unit[self.pool].T
            similarity[self.pool.unsqueeze(0) == chunk.unsqueeze(1)] = -math.inf  # never the word itself
            self.table[chunk] = self.pool[similarity.topk(self.k, dim=1).indices]

    def candidates(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        words = [row.input_ids[row.positions].long() for row in rows]
        if words:
            self._fill(torch.cat(words))
        return [self.table[w] for w in words]


class MaskedLMCandidates:
    """The ``k`` likeliest whole words at a masked position, from a masked-LM head, in the row's own context.

    Each row is run with a share of its replaceable words masked at a time (:data:`MASK_SHARE`, spread over the
    row so neighbours are not masked together); the word itself is never a candidate.
    """

    kind = "masked_lm"

    def __init__(self, model: torch.nn.Module, vocabulary: WordVocabulary, mask_token_id: int, k: int) -> None:
        self.model = model.eval()
        self.allowed = vocabulary.words
        self.mask_token_id = mask_token_id
        self.k = k
        self.batch_size = 64
        embeddings = model.get_input_embeddings().weight
        self.fingerprint = f"{self.kind}:{_tensor_digest(embeddings)}:{k}"

    def _allowed(self, size: int) -> torch.Tensor:
        """Whole words over the head's outputs (a model's vocabulary may be padded beyond the tokenizer's)."""
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[: min(size, len(self.allowed))] = self.allowed[:size]
        return allowed

    def _passes(self, rows: Sequence[Row]) -> Iterator[tuple[int, torch.Tensor]]:
        """``(row index, masked positions)`` for every forward pass the rows need."""
        for index, row in enumerate(rows):
            groups = min(len(row.positions), math.ceil(1 / MASK_SHARE))
            for group in range(groups):
                yield index, row.positions[group::groups]

    @torch.no_grad()
    def candidates(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        found = [torch.empty(len(row.positions), self.k, dtype=torch.long) for row in rows]
        passes = list(self._passes(rows))
        for start in range(0, len(passes), self.batch_size):
            chunk = passes[start : start + self.batch_size]
            width = max(len(rows[index].input_ids) for index, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            types = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, (index, masked) in enumerate(chunk):
                row = rows[index]
                length = len(row.input_ids)
                ids[b, :length] = row.input_ids
                ids[b, masked] = self.mask_token_id
                mask[b, :length] = 1
                if row.token_type_ids is not None:
                    types[b, :length] = row.token_type_ids
            inputs = {"input_ids": ids, "attention_mask": mask}
            if any(rows[index].token_type_ids is not None for index, _ in chunk):
                inputs["token_type_ids"] = types
            logits = self.model(**inputs).logits.float()
            logits[..., ~self._allowed(logits.shape[-1])] = -math.inf
            for b, (index, masked) in enumerate(chunk):
                row = rows[index]
                scores = logits[b, masked]
                scores.scatter_(1, row.input_ids[masked].long().unsqueeze(1), -math.inf)  # never the word itself
                slots = torch.searchsorted(row.positions, masked)
                found[index][slots] = scores.topk(self.k, dim=1).indices
        return found


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No 'weights newly initialized' warnings: a missing masked-LM head is expected and handled here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_candidate_source(model_path: str, tokenizer: Any, vocabulary: WordVocabulary, k: int) -> CandidateSource:
    """The masked-LM head of the checkpoint in ``model_path`` where it has a complete one, else the neighbours in
    its input embeddings.

    Raises:
        ModelError: naming the folder when no model can be read from it.
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    with _quiet_transformers():
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(model_path, output_loading_info=True)
        except (ValueError, KeyError):  # an architecture without a masked-LM class
            model, info = None, None
        if model is not None and not info["missing_keys"] and tokenizer.mask_token_id is not None:
            return MaskedLMCandidates(model, vocabulary, tokenizer.mask_token_id, k)
        if model is None:
            try:
                model = AutoModel.from_pretrained(model_path)
            except Exception as err:  # transformers raises many types for an unreadable folder
                raise ModelError(f"{model_path}: cannot read the model for augmentation ({err})") from None
    return EmbeddingNeighbours(model.get_input_embeddings().weight, vocabulary, k)
