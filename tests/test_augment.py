"""TinyBERT-style augmentation (xtc_ds.augment): replaceable words, candidates from a masked-LM head or embedding
neighbours, seeded variants, pairs, labels, the on-disk cache, and XtcTrainer's augmentation argument."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import minilm_path
from xtc_ds.augment import (
    NO_CLASS_LABEL,
    AugmentedDataset,
    AugmentedRows,
    Augmenter,
    AugmentSettings,
    EmbeddingNeighbours,
    ListRows,
    MaskedLMCandidates,
    PaddedRows,
    WordVocabulary,
    augment_rows,
    generate,
    load_candidate_source,
    variant_edits,
)
from xtc_ds.errors import DataError

SENTENCES = [
    "the movie was wonderful and the acting superb",
    "a dull plot with boring characters and terrible dialogue",
    "unbelievably, this film made me laugh",
    "great music, lovely scenery, happy ending",
]
SECONDS = [
    "critics praised the director",
    "nobody enjoyed the long story",
    "the comedy works",
    "audiences cheered loudly",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
    return WordVocabulary.of(tokenizer)


def _encode(tokenizer, pairs=False, labels=None):
    encoded = tokenizer(SENTENCES, SECONDS if pairs else None, padding="max_length", max_length=32, truncation=True)
    tensors = {key: torch.tensor(value) for key, value in encoded.items()}
    tensors["labels"] = torch.tensor(labels if labels is not None else [0, 1, 1, 0])
    return tensors


def _settings(**changes):
    return AugmentSettings(**{"variants": 8, "prob": 0.5, "candidates": 5, "seed": 3, **changes})


def _tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_replaceable_positions_are_single_token_content_words(tokenizer, vocabulary):
    ids = tokenizer("unbelievably, the movie's plot was bad", "great acting")["input_ids"]
    words = _tokens(tokenizer, torch.tensor(ids)[vocabulary.positions(torch.tensor(ids), len(ids))])
    # "unbelievably" is five pieces (kept), "the"/"was"/"s" are stop words, "," and [SEP] are not words
    assert words == ["movie", "plot", "bad", "great", "acting"]
    assert vocabulary.words[tokenizer.convert_tokens_to_ids("film")]
    assert not vocabulary.words[tokenizer.convert_tokens_to_ids("##ing")]
    assert vocabulary.continues[tokenizer.convert_tokens_to_ids("##ing")]
    assert not vocabulary.words[tokenizer.sep_token_id] and not vocabulary.words[tokenizer.convert_tokens_to_ids(",")]


def test_variants_are_seeded_distinct_and_change_something():
    positions = torch.tensor([2, 5, 9])
    candidates = torch.arange(30).view(3, 10) + 100
    first = variant_edits(7, positions, candidates, _settings(variants=20))
    again = variant_edits(7, positions, candidates, _settings(variants=20))
    other_seed = variant_edits(7, positions, candidates, _settings(variants=20, seed=4))
    other_row = variant_edits(8, positions, candidates, _settings(variants=20))
    as_keys = [lambda edits: [(p.tolist(), t.tolist()) for p, t in edits]][0]
    assert as_keys(first) == as_keys(again)
    assert as_keys(first) != as_keys(other_seed) and as_keys(first) != as_keys(other_row)
    assert 0 < len(first) <= 20 and len({json.dumps(key) for key in as_keys(first)}) == len(first)
    for where, tokens in first:
        assert len(where) > 0
        for position, token in zip(where, tokens):
            row = positions.tolist().index(position)
            assert token in candidates[row].tolist()
    assert variant_edits(0, torch.tensor([], dtype=torch.long), candidates[:0], _settings()) == []


def test_a_pair_gets_its_tries_for_each_text_and_a_single_text_keeps_its_draws():
    positions = torch.tensor([2, 3, 5, 9, 10])
    candidates = torch.arange(50).view(5, 10) + 100
    texts = torch.tensor([1, 1, 1, 2, 2])  # [CLS] a a . a [SEP] b b
    pair = variant_edits(7, positions, candidates, _settings(variants=20), texts)
    first, second = {2, 3, 5}, {9, 10}
    assert all(set(where.tolist()) <= first or set(where.tolist()) <= second for where, _ in pair)
    on_first = [where for where, _ in pair if set(where.tolist()) <= first]
    assert 0 < len(on_first) < len(pair) and len(pair) > 20  # 20 tries for each text
    single = variant_edits(7, positions, candidates, _settings(variants=20), torch.ones(5, dtype=torch.long))
    as_keys = [lambda edits: [(p.tolist(), t.tolist()) for p, t in edits]][0]
    assert as_keys(single) == as_keys(variant_edits(7, positions, candidates, _settings(variants=20)))


def test_texts_of_a_row_are_counted_by_its_separators(tokenizer, vocabulary):
    ids = torch.tensor(tokenizer("the movie was wonderful", "critics praised it")["input_ids"])
    positions = vocabulary.positions(ids, len(ids))
    texts = vocabulary.texts(ids, positions)
    assert _tokens(tokenizer, ids[positions]) == ["movie", "wonderful", "critics", "praised"]
    assert texts.tolist() == [1, 1, 2, 2]
    unknown = torch.tensor(tokenizer("the [UNK] movie was wonderful")["input_ids"])
    assert len(vocabulary.texts(unknown, vocabulary.positions(unknown, len(unknown))).unique()) == 1


def test_embedding_neighbours_are_the_nearest_whole_words(tokenizer, vocabulary):
    from transformers import AutoModel

    embeddings = AutoModel.from_pretrained(minilm_path()).get_input_embeddings().weight.detach()
    source = EmbeddingNeighbours(embeddings, vocabulary, k=5)
    word = tokenizer.convert_tokens_to_ids("wonderful")
    ids = torch.tensor([tokenizer.cls_token_id, word, tokenizer.sep_token_id])
    (found,) = source.candidates([generate.Row(ids, None, torch.tensor([1]))])
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    similarity = unit @ unit[word]
    similarity[~vocabulary.words] = -2.0
    similarity[word] = -2.0
    assert found[0].tolist() == similarity.topk(5).indices.tolist()
    assert "wonderful" not in _tokens(tokenizer, found[0]) and all(vocabulary.words[found[0]])


def _tiny_checkpoint(folder, tokenizer, masked_lm: bool):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,  # weights large enough that predictions depend on the context
    )
    torch.manual_seed(0)
    model = (BertForMaskedLM if masked_lm else BertForSequenceClassification)(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval()


def test_candidates_come_from_a_masked_lm_head_where_the_checkpoint_has_one(tmp_path, tokenizer, vocabulary):
    head = _tiny_checkpoint(tmp_path / "mlm", tokenizer, masked_lm=True)
    _tiny_checkpoint(tmp_path / "classifier", tokenizer, masked_lm=False)
    source = load_candidate_source(str(tmp_path / "mlm"), tokenizer, vocabulary, 4)
    assert isinstance(source, MaskedLMCandidates)
    assert isinstance(
        load_candidate_source(str(tmp_path / "classifier"), tokenizer, vocabulary, 4), EmbeddingNeighbours
    )
    assert isinstance(load_candidate_source(minilm_path(), tokenizer, vocabulary, 4), EmbeddingNeighbours)

    ids = torch.tensor(
        tokenizer("acting music scenery story plot ending comedy director critics audiences")["input_ids"]
    )
    positions = vocabulary.positions(ids, len(ids))
    assert len(positions) == 10  # more words than passes: each pass masks a share of them (MASK_SHARE)
    (found,) = source.candidates([generate.Row(ids, None, positions)])

    def top(masked_positions, position):
        masked = ids.clone()
        masked[masked_positions] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = head(input_ids=masked[None]).logits[0, position]
        logits[~vocabulary.words] = -math.inf
        logits[ids[position]] = -math.inf
        return logits.topk(4).indices.tolist()

    for slot, position in enumerate(positions.tolist()):
        assert found[slot].tolist() == top(positions[slot % 7 :: 7], position)  # the pass it was predicted in
    assert any(found[slot].tolist() != top(positions, p) for slot, p in enumerate(positions.tolist()))


def test_rows_are_augmented_from_their_source_and_pairs_stay_pairs(tmp_path, tokenizer, vocabulary):
    tensors = _encode(tokenizer, pairs=True)
    edits = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), tmp_path / "aug")
    rows = AugmentedRows(tensors, edits)
    assert len(rows) == 4 + len(edits) and len(edits) > 8
    variants = torch.arange(4, len(rows))
    batch = rows.batch(variants)
    sources = torch.from_numpy(np.array(edits.source, dtype=np.int64))
    for key in ("attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], tensors[key][sources]), key
    changed = batch["input_ids"] != tensors["input_ids"][sources]
    assert changed.any(dim=1).all()  # every variant replaces something
    sep = tensors["input_ids"][sources] == tokenizer.sep_token_id
    assert torch.equal(batch["input_ids"] == tokenizer.sep_token_id, sep)  # the pair's separators stay
    types = tensors["token_type_ids"][sources]
    for row in range(len(variants)):  # a variant changes one text of its pair, the other stays as it was
        assert len(types[row][changed[row]].unique()) == 1, row
    for source in range(4):  # and each text of every pair has variants of its own
        assert set(types[sources == source][changed[sources == source]].tolist()) == {0, 1}, source
    for row in range(len(variants)):
        replaceable = vocabulary.positions(tensors["input_ids"][sources[row]], 32).tolist()
        assert set(changed[row].nonzero().flatten().tolist()) <= set(replaceable)
        assert vocabulary.words[batch["input_ids"][row][changed[row]]].all()
    assert torch.equal(rows.lengths(), tensors["attention_mask"].sum(dim=1)[torch.cat([torch.arange(4), sources])])


def test_variants_carry_no_label(tmp_path, tokenizer):
    tensors = _encode(tokenizer)
    edits = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), tmp_path / "aug")
    rows = AugmentedRows(tensors, edits)
    batch = rows.batch(torch.tensor([0, 3, 4, len(rows) - 1, 2]))
    assert batch["labels"].tolist() == [0, 0, NO_CLASS_LABEL, NO_CLASS_LABEL, 1]
    regression = dict(tensors, labels=torch.tensor([0.5, 1.5, 4.0, 2.0]))
    labels = AugmentedRows(regression, edits).batch(torch.tensor([2, 4]))["labels"]
    assert labels[0] == 4.0 and torch.isnan(labels[1])

    import datasets

    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [ids[:length].tolist() for ids, length in zip(tensors["input_ids"], edits_lengths(tensors))],
            "label": [0, 1, 1, 0],
            "score": [0.5, 1.5, 4.0, 2.0],
            "sentence": SENTENCES,
        }
    )
    wrapped = AugmentedDataset(dataset, edits, label_names=("label", "score"))
    original, variant = wrapped[1], wrapped[len(dataset)]
    assert original["label"] == 1 and variant["label"] == NO_CLASS_LABEL and math.isnan(variant["score"])
    source, positions, tokens = edits.edit(0)
    expected = list(dataset[source]["input_ids"])
    for position, token in zip(positions.tolist(), tokens.tolist()):
        expected[position] = token
    assert variant["input_ids"] == expected and variant["sentence"] == SENTENCES[source]


def edits_lengths(tensors):
    return tensors["attention_mask"].sum(dim=1).tolist()


def test_list_rows_of_a_tokenized_dataset_give_the_same_variants(tmp_path, tokenizer):
    import datasets

    tensors = _encode(tokenizer, pairs=True)
    lengths = edits_lengths(tensors)
    dataset = datasets.Dataset.from_dict(
        {key: [row[:n].tolist() for row, n in zip(tensors[key], lengths)] for key in ("input_ids", "token_type_ids")}
    )
    padded = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), tmp_path / "a")
    listed = augment_rows(ListRows(dataset), tokenizer, minilm_path(), _settings(), tmp_path / "b")
    for name in ("source", "offsets", "positions", "tokens"):
        assert np.array_equal(getattr(padded, name), getattr(listed, name)), name


def test_the_cache_is_reused_and_rebuilt_when_a_setting_or_the_data_changes(tmp_path, tokenizer, monkeypatch):
    tensors = _encode(tokenizer)
    folder = tmp_path / "aug"
    made = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), folder)
    assert made.meta["candidates_from"] == "embedding_neighbours" and made.meta["rows"] == 4

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached variants were computed again")

    with monkeypatch.context() as patch:
        patch.setattr(generate, "_batches", no_recompute)
        reused = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), folder)
    assert np.array_equal(reused.tokens, made.tokens)
    changed = augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(prob=0.9), folder)
    assert changed.meta["key"] != made.meta["key"] and changed.meta["settings"]["prob"] == 0.9
    assert len(changed.tokens) > len(made.tokens)  # more words replaced per variant
    other_data = dict(
        tensors, input_ids=tensors["input_ids"].flip(0), attention_mask=tensors["attention_mask"].flip(0)
    )
    rebuilt = augment_rows(PaddedRows(other_data), tokenizer, minilm_path(), _settings(prob=0.9), folder)
    assert rebuilt.meta["key"] != changed.meta["key"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aug"]  # replaced in place, no temporaries left


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_damaged_cache_is_an_error_naming_the_file(tmp_path, tokenizer, damage):
    tensors = _encode(tokenizer)
    folder = tmp_path / "aug"
    augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), folder)
    tokens = folder / "tokens.bin"
    if damage == "truncate":
        tokens.write_bytes(tokens.read_bytes()[:-4])
        message = f"{tokens}: missing or truncated"
    elif damage == "flip":
        data = bytearray(tokens.read_bytes())
        data[0] ^= 1
        tokens.write_bytes(bytes(data))
        message = f"{tokens}: its contents differ"
    else:
        (folder / "xtc_augmentation.json").write_text("{not json")
        message = f"{folder / 'xtc_augmentation.json'}: unreadable"
    with pytest.raises(DataError, match=f"{message}.*delete {folder}"):
        augment_rows(PaddedRows(tensors), tokenizer, minilm_path(), _settings(), folder)


def test_settings_are_checked():
    for bad in ({"variants": 0}, {"prob": 0.0}, {"prob": 1.5}, {"candidates": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentSettings(**bad)


def test_augmenter_names_its_candidate_source(tmp_path, tokenizer):
    _tiny_checkpoint(tmp_path / "mlm", tokenizer, masked_lm=True)
    assert Augmenter(tokenizer, str(tmp_path / "mlm"), _settings()).kind == "masked_lm"
    assert Augmenter(tokenizer, minilm_path(), _settings()).kind == "embedding_neighbours"
