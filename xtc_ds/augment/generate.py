"""TinyBERT's augmentation of encoded rows: seeded word replacement, computed once and cached on disk.

For each row, ``variants`` tries replace each replaceable word with probability ``prob`` by one of its
``candidates`` (:mod:`.candidates`); a try that changes nothing, or repeats an earlier variant of the row, is
dropped (as TinyBERT drops repeated sentences). A pair gets ``variants`` tries for each of its texts, each try
changing that text only (as TinyBERT augments a pair one sentence at a time): changing both texts at once makes
a paraphrase or entailment pair read as unrelated far more often (MRPC: the teacher called 17.5 % of such
variants the other class than their source row, against 7-8.5 % when one text changes; docs/RESULTS.md).
The random draws of row ``r`` come from a generator seeded by ``(seed, r)``: the variants of a row do not depend
on how the rows are cut into chunks or on any other row.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from xtc_ds._log import logger
from xtc_ds.augment.candidates import CandidateSource, Row, load_candidate_source
from xtc_ds.augment.store import AugmentedEdits, AugmentSettings, read_edits, write_edits
from xtc_ds.augment.vocabulary import WordVocabulary

__all__ = ["EncodedRows", "PaddedRows", "ListRows", "variant_edits", "Augmenter", "augment_rows", "CHUNK_ROWS"]

CHUNK_ROWS = 256
"""Rows whose variants are computed (and written) together: the only part held in memory at a time."""
VARIANTS_VERSION = 2
"""How variants are drawn, part of the cache key (2: a pair's variant changes one text; 1 changed both)."""


class EncodedRows(Protocol):
    """Encoded training rows, read a slice at a time."""

    def __len__(self) -> int: ...

    def rows(self, start: int, stop: int) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """``(input_ids, token_type_ids or None)`` of rows ``start:stop``, without padding."""
        ...


class PaddedRows:
    """Rows of padded tensors (``input_ids``, ``attention_mask``, maybe ``token_type_ids``), as a tokenizer
    called with ``padding="max_length"`` makes them."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.lengths = tensors["attention_mask"].sum(dim=1)

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, start: int, stop: int) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        types = self.tensors.get("token_type_ids")
        out = []
        for index in range(start, stop):
            length = int(self.lengths[index])
            ids = self.tensors["input_ids"][index, :length]
            out.append((ids, None if types is None else types[index, :length]))
        return out


class ListRows:
    """Rows of a tokenized ``datasets.Dataset`` (lists of ids per row, as ``Dataset.map`` writes them)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def rows(self, start: int, stop: int) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        batch = self.dataset[start:stop]
        types = batch.get("token_type_ids")
        out = []
        for index, ids in enumerate(batch["input_ids"]):
            row_types = None if types is None else torch.tensor(types[index], dtype=torch.long)
            out.append((torch.tensor(ids, dtype=torch.long), row_types))
        return out


def variant_edits(
    row: int,
    positions: torch.Tensor,
    candidates: torch.Tensor,
    settings: AugmentSettings,
    texts: Optional[torch.Tensor] = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The distinct variants of one row as ``(positions, tokens)`` edits, seeded by ``(settings.seed, row)``.

    ``texts``: which text each position is in (:meth:`WordVocabulary.texts`); a row of several texts gets
    ``settings.variants`` tries per text, each replacing words of that text only.
    """
    if len(positions) == 0:
        return []
    own_text = [(texts == text).numpy() for text in texts.unique()] if texts is not None else []
    if len(own_text) < 2:  # one text: every position may change in every try
        own_text = [np.ones(len(positions), dtype=bool)]
    tries = settings.variants * len(own_text)
    rng = np.random.default_rng([settings.seed, row])
    replace = rng.random((tries, len(positions))) < settings.prob
    picks = rng.integers(0, candidates.shape[1], size=(tries, len(positions)))
    where, table = positions.numpy(), candidates.numpy()
    seen: set[tuple[bytes, bytes]] = set()
    edits = []
    for tried in range(tries):
        chosen = np.flatnonzero(replace[tried] & own_text[tried // settings.variants])
        tokens = table[chosen, picks[tried, chosen]]
        key = (chosen.tobytes(), tokens.tobytes())
        if len(chosen) and key not in seen:
            seen.add(key)
            edits.append((where[chosen], tokens))
    return edits


def _key(rows: EncodedRows, settings: AugmentSettings, vocabulary: WordVocabulary, source: CandidateSource) -> str:
    """What the cached variants depend on: every row's tokens, the settings, the tokenizer and the candidates."""
    what = (VARIANTS_VERSION, settings, vocabulary.fingerprint, source.fingerprint, len(rows))
    digest = hashlib.sha256(repr(what).encode())
    for start in range(0, len(rows), 4096):
        for ids, types in rows.rows(start, min(len(rows), start + 4096)):
            digest.update(ids.long().numpy().tobytes() + b"|")
            if types is not None:
                digest.update(types.long().numpy().tobytes())
    return digest.hexdigest()


def _batches(
    rows: EncodedRows, vocabulary: WordVocabulary, source: CandidateSource, settings: AugmentSettings, progress: bool
) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc="augment", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = [
                Row(ids, types, vocabulary.positions(ids, len(ids)))
                for ids, types in rows.rows(start, min(len(rows), start + CHUNK_ROWS))
            ]
            batch = []
            for offset, (row, candidates) in enumerate(zip(chunk, source.candidates(chunk))):
                texts = vocabulary.texts(row.input_ids, row.positions)
                for positions, tokens in variant_edits(start + offset, row.positions, candidates, settings, texts):
                    batch.append((start + offset, positions, tokens))
            bar.update(len(chunk))
            yield batch


class Augmenter:
    """The word vocabulary and candidate source of one tokenizer and checkpoint, ready to augment rows.

    Args:
        tokenizer: the tokenizer that encodes the rows.
        model_path: the checkpoint whose masked-LM head, or else input embeddings, proposes words
            (:func:`~xtc_ds.augment.candidates.load_candidate_source`).
        settings: variants, probability, candidates, seed.
    """

    def __init__(self, tokenizer: Any, model_path: str, settings: AugmentSettings) -> None:
        self.settings = settings
        self.model_path = str(model_path)
        self.vocabulary = WordVocabulary.of(tokenizer)
        self.source = load_candidate_source(self.model_path, tokenizer, self.vocabulary, settings.candidates)

    @property
    def kind(self) -> str:
        """``masked_lm`` or ``embedding_neighbours``."""
        return self.source.kind

    def __call__(self, rows: EncodedRows, folder: Path, progress: bool = True) -> AugmentedEdits:
        """The variants of ``rows``, read from ``folder`` when it holds them for the same rows, settings,
        tokenizer and candidate source, else computed and written there (atomically, replacing an outdated cache).

        Raises:
            DataError: the cache in ``folder`` is damaged (naming the file).
        """
        key = _key(rows, self.settings, self.vocabulary, self.source)
        cached = read_edits(folder, key)
        if cached is not None:
            logger.info("xtc_ds: reusing the %d augmented rows in %s", len(cached), folder)
            return cached
        started = time.time()
        batches = _batches(rows, self.vocabulary, self.source, self.settings, progress)
        info = {"candidates_from": self.kind, "model": self.model_path, "rows": len(rows)}
        edits = write_edits(folder, key, self.settings, batches, info)
        logger.info(
            "xtc_ds: %d augmented rows of %d (%s) in %.0f s, in %s",
            len(edits),
            len(rows),
            self.kind,
            time.time() - started,
            folder,
        )
        return edits


def augment_rows(
    rows: EncodedRows,
    tokenizer: Any,
    model_path: str,
    settings: AugmentSettings,
    folder: Path,
    progress: bool = True,
) -> AugmentedEdits:
    """``Augmenter(tokenizer, model_path, settings)(rows, folder, progress)``: the variants of ``rows``, cached in
    ``folder``.

    Example:
        >>> edits = augment_rows(PaddedRows(encoded), tokenizer, "bert-base-uncased", AugmentSettings(), out / "aug")
        >>> train = AugmentedRows(encoded, edits)  # originals, then variants with no label
    """
    return Augmenter(tokenizer, model_path, settings)(rows, folder, progress)
