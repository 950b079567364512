"""Which tokens of a vocabulary are whole words, and which positions of an encoded row may be replaced.

TinyBERT's augmentation replaces words, not word pieces. Working on encoded rows (ids with special tokens,
truncated as training sees them) instead of text keeps every replacement one token for one token, so special
tokens, token types, truncation and lengths of a variant are those of its source row, for any tokenizer.

A token is a *word* when its text is alphabetic and starts a new word where it follows another word (WordPiece
``good``, byte-level BPE ``Ġgood``, SentencePiece ``▁good``; not ``##ing`` or ``,``). It is a *continuation* when
it is a piece inside a word (``##ing``; an alphanumeric BPE or SentencePiece piece without the space mark).
A position may be replaced when it holds a word that is not a stop word and the next token does
not continue it: a word split into several pieces is kept, as TinyBERT keeps one it has no vector for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["STOP_WORDS", "WordVocabulary"]

STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
    it its itself they them their theirs themselves what which who whom this that these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until while of at by for with
    about against between into through during before after above below to from up down in out on off over under
    again further then once here there when where why how all any both each few more most other some such no nor not
    only own same so than too very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn
    hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
    """.split()
)
"""Words never replaced (TinyBERT's English list): changing them alters syntax more than meaning."""


def _piece_texts(tokenizer: Any, size: int) -> list[str]:
    """Each token's text as it reads after the word ``the``: a leading space marks the start of a new word."""
    anchor = tokenizer.convert_ids_to_tokens(tokenizer(" the", add_special_tokens=False)["input_ids"][-1:])
    prefix = tokenizer.convert_tokens_to_string(anchor)
    texts = []
    for token in tokenizer.convert_ids_to_tokens(list(range(size))):
        joined = tokenizer.convert_tokens_to_string([*anchor, token]) if token else prefix
        texts.append(joined[len(prefix) :] if joined.startswith(prefix) else "")
    return texts


@dataclass(frozen=True)
class WordVocabulary:
    """Per-token facts of one tokenizer, as boolean tensors over its ids.

    Attributes:
        words: the token is a whole alphabetic word (a replacement candidate).
        replaceable: a word that is not a stop word (a position holding it may be replaced).
        continues: the token is a piece inside a word, so the word before it is not a single token.
        separators: the tokens that start, end and separate texts (``[CLS]``, ``[SEP]``, ``<s>``, ``</s>``).
        fingerprint: a hash of the vocabulary, so cached augmentations of another tokenizer are not reused.
    """

    words: torch.Tensor
    replaceable: torch.Tensor
    continues: torch.Tensor
    separators: torch.Tensor
    fingerprint: str

    @classmethod
    def of(cls, tokenizer: Any) -> WordVocabulary:
        """Classify every token of ``tokenizer`` (a fast or slow Hugging Face tokenizer)."""
        size = len(tokenizer)
        texts = _piece_texts(tokenizer, size)
        special = set(tokenizer.all_special_ids)
        separators = torch.zeros(size, dtype=torch.bool)
        for name in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id"):
            token = getattr(tokenizer, name, None)
            if token is not None and 0 <= token < size:
                separators[token] = True
        words = torch.zeros(size, dtype=torch.bool)
        continues = torch.zeros(size, dtype=torch.bool)
        for token, text in enumerate(texts):
            if token in special or not text.strip():
                continue
            starts_word = text[0].isspace()
            words[token] = starts_word and text.strip().isalpha()
            continues[token] = not starts_word and text.isalnum()
        stop = torch.tensor([text.strip().lower() in STOP_WORDS for text in texts], dtype=torch.bool)
        digest = hashlib.sha256("\n".join(tokenizer.convert_ids_to_tokens(list(range(size)))).encode()).hexdigest()
        return cls(words, words & ~stop, continues, separators, digest[:16])

    def positions(self, input_ids: torch.Tensor, length: int) -> torch.Tensor:
        """The replaceable positions among the first ``length`` tokens of one encoded row."""
        ids = input_ids[:length].long()
        single = torch.ones(length, dtype=torch.bool)
        single[:-1] = ~self.continues[ids[1:]]
        return torch.nonzero(self.replaceable[ids] & single).flatten()

    def texts(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Which text of the row each position is in, as the number of separators before it: one value for a single
        text, two for a pair (``[CLS] a [SEP] b [SEP]``: 1 and 2; ``<s> a </s></s> b </s>``: 1 and 3)."""
        before = torch.cumsum(self.separators[input_ids.long()].long(), dim=0)
        return before[positions]
