"""Tests for hybridlm.data: tokenizer, built-in corpus, grain LM batches."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from hybridlm.data import (
    ByteTokenizer,
    load_builtin_corpus,
    make_lm_dataset,
    num_windows,
    unigram_entropy,
)
from hybridlm.data.builtin_corpus import is_heldout, list_source_files, stdlib_dir

EOS = ByteTokenizer.eos_id
SMALL_BYTES = 600_000


@pytest.fixture(scope="module")
def corpus():
    return load_builtin_corpus(SMALL_BYTES, heldout_fraction=0.1)


def _lm_dataset(tokens, **overrides):
    kwargs = dict(seq_len=7, batch_size=4, seed=0, shuffle=True, eos_id=EOS, document_ids=True)
    kwargs.update(overrides)
    return make_lm_dataset(tokens, **kwargs)


def _rows(ds, num_steps):
    return np.concatenate([ds[s]["inputs"] for s in range(num_steps)])


# Tokenizer.


def test_tokenizer_round_trip_non_ascii():
    tok = ByteTokenizer()
    text = "héllo wörld — 日本語 🐍\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode(text.encode("utf-8")).tolist() == ids.tolist()


def test_tokenizer_special_ids():
    tok = ByteTokenizer()
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258)
    ids = np.concatenate([tok.encode("ab"), [tok.eos_id], tok.encode("c"), [tok.pad_id] * 3])
    assert tok.decode(ids) == "abc"
    assert tok.decode(np.array([[0xC3], [tok.eos_id]])) == "\ufffd"


# Corpus.


def test_corpus_splits(corpus):
    splits = (
        (corpus.train, corpus.num_train_docs),
        (corpus.heldout, corpus.num_heldout_docs),
    )
    for split, num_docs in splits:
        assert split.dtype == np.uint16
        assert split.ndim == 1 and split.size > 0
        assert split[-1] == EOS
        assert int(np.sum(split == EOS)) == num_docs
        assert split.max() <= EOS
    assert corpus.num_heldout_docs >= 1 and corpus.num_train_docs > corpus.num_heldout_docs
    num_docs = corpus.num_train_docs + corpus.num_heldout_docs
    assert corpus.train.size + corpus.heldout.size - num_docs <= SMALL_BYTES
    assert corpus.source == stdlib_dir()


def test_corpus_splits_are_whole_files_in_sorted_order(corpus):
    root = stdlib_dir()
    paths = list_source_files(root)[: corpus.num_train_docs + corpus.num_heldout_docs]
    expected = {True: [], False: []}
    for index, path in enumerate(paths):
        with open(os.path.join(root, path), "rb") as f:
            expected[is_heldout(index, 0.1)].append(f.read() + b"\0")
    for split, heldout in ((corpus.train, False), (corpus.heldout, True)):
        as_bytes = np.where(split == EOS, 0, split).astype(np.uint8).tobytes()
        assert as_bytes == b"".join(expected[heldout])
    assert len(expected[True]) == corpus.num_heldout_docs


def test_corpus_deterministic_and_prefix_stable(corpus):
    again = load_builtin_corpus(SMALL_BYTES, heldout_fraction=0.1)
    np.testing.assert_array_equal(again.train, corpus.train)
    np.testing.assert_array_equal(again.heldout, corpus.heldout)
    larger = load_builtin_corpus(2 * SMALL_BYTES, heldout_fraction=0.1)
    np.testing.assert_array_equal(larger.heldout[: corpus.heldout.size], corpus.heldout)
    np.testing.assert_array_equal(larger.train[: corpus.train.size], corpus.train)


def test_corpus_file_list_sorted_and_skips_tests():
    paths = list_source_files(stdlib_dir())
    assert paths == sorted(paths) and paths
    assert all(p.endswith(".py") for p in paths)
    skipped = {"test", "tests", "site-packages"}
    assert not any(skipped & set(p.split(os.sep)) for p in paths)


def test_heldout_assignment_fraction():
    assert sum(is_heldout(i, 0.1) for i in range(1000)) == 100
    assert [i for i in range(30) if is_heldout(i, 0.1)] == [9, 19, 29]


def test_corpus_errors():
    with pytest.raises(ValueError, match="heldout_fraction"):
        load_builtin_corpus(SMALL_BYTES, heldout_fraction=0.0)
    with pytest.raises(ValueError, match="empty"):
        load_builtin_corpus(1, heldout_fraction=0.1)
    with pytest.raises(ValueError, match="0 held-out"):
        load_builtin_corpus(SMALL_BYTES, heldout_fraction=1e-6)


def test_unigram_entropy_closed_form():
    tokens = np.array([0] * 2 + [1] * 1 + [2] * 1, dtype=np.uint16)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(tokens, 258) == pytest.approx(expected)
    uniform = np.arange(256, dtype=np.uint16).repeat(3)
    assert unigram_entropy(uniform, 258) == pytest.approx(math.log(256))
    assert unigram_entropy(np.full(10, 7), 258) == 0.0
    with pytest.raises(ValueError, match="258"):
        unigram_entropy(np.array([258]), 258)


# Batches.


def test_batch_shapes_and_shift():
    tokens = np.arange(200, dtype=np.uint16) % 250
    ds = _lm_dataset(tokens, shuffle=False)
    batch = ds[0]
    assert set(batch) == {"inputs", "targets", "segment_ids"}
    for value in batch.values():
        assert value.shape == (4, 7) and value.dtype == np.int32
    windows = tokens[: 4 * 8].reshape(4, 8)
    np.testing.assert_array_equal(batch["inputs"], windows[:, :-1])
    np.testing.assert_array_equal(batch["targets"], windows[:, 1:])


def test_unshuffled_is_one_ordered_pass():
    tokens = np.arange(1003, dtype=np.uint16)
    ds = _lm_dataset(tokens, shuffle=False)
    n = num_windows(tokens.size, 7)
    assert n == 125 and len(ds) == n // 4
    rows = _rows(ds, len(ds))
    expected = tokens[: len(ds) * 4 * 8].reshape(-1, 8)[:, :-1]
    np.testing.assert_array_equal(rows, expected)


def test_shuffled_epochs_are_permutations_in_new_orders():
    tokens = np.arange(8 * 48, dtype=np.uint16)  # 48 windows, 12 steps/epoch.
    ds = _lm_dataset(tokens)
    assert len(ds) > 10**9
    window_ids = _rows(ds, 24)[:, 0] // 8
    first, second = window_ids[:48], window_ids[48:]
    assert sorted(first) == list(range(48)) and sorted(second) == list(range(48))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(48))


def test_shuffled_epochs_straddle_batches():
    tokens = np.arange(8 * 10, dtype=np.uint16)  # 10 windows, batch of 4.
    window_ids = _rows(_lm_dataset(tokens), 5)[:, 0] // 8
    assert sorted(window_ids[:10]) == list(range(10))
    assert sorted(window_ids[10:]) == list(range(10))


def test_resume_and_seeds():
    tokens = np.arange(8 * 100, dtype=np.uint16) % 256
    ds = _lm_dataset(tokens, seed=3)
    rebuilt = _lm_dataset(tokens, seed=3)
    for step in (0, 7, 25, 10_000):
        for key in ds[step]:
            np.testing.assert_array_equal(ds[step][key], rebuilt[step][key])
    other = _lm_dataset(tokens, seed=4)
    assert not np.array_equal(_rows(ds, 3), _rows(other, 3))


def test_segment_ids_increment_after_eos():
    tokens = np.array([1, 2, EOS, 3, EOS, EOS, 4, 5] * 4, dtype=np.uint16)
    ds = _lm_dataset(tokens, seq_len=7, batch_size=1, shuffle=False)
    batch = ds[0]
    np.testing.assert_array_equal(batch["inputs"][0], [1, 2, EOS, 3, EOS, EOS, 4])
    np.testing.assert_array_equal(batch["segment_ids"][0], [0, 0, 0, 1, 1, 2, 3])
    flat = _lm_dataset(tokens, seq_len=7, batch_size=1, shuffle=False, document_ids=False)
    np.testing.assert_array_equal(flat[0]["segment_ids"], np.zeros((1, 7)))
    # Each row starts a fresh count.
    np.testing.assert_array_equal(ds[1]["segment_ids"][0], [0, 0, 0, 1, 1, 2, 3])


def test_batch_errors():
    tokens = np.arange(31, dtype=np.uint16)
    message = r"held-out split has 31 tokens .* = 4\*\(7\+1\) = 32; lower data.batch_size"
    with pytest.raises(ValueError, match=message):
        _lm_dataset(tokens, shuffle=False, name="held-out split")
    with pytest.raises(ValueError, match="has 31 tokens"):
        _lm_dataset(tokens)
    with pytest.raises(ValueError, match="seq_len"):
        _lm_dataset(tokens, seq_len=0)
    with pytest.raises(ValueError, match="batch_size"):
        _lm_dataset(tokens, batch_size=0)
    assert len(_lm_dataset(np.arange(32, dtype=np.uint16), shuffle=False)) == 1


def test_corpus_batches_end_to_end(corpus):
    ds = make_lm_dataset(
        corpus.heldout,
        seq_len=64,
        batch_size=2,
        seed=0,
        shuffle=False,
        eos_id=EOS,
        document_ids=True,
        name="held-out split",
    )
    assert len(ds) == num_windows(corpus.heldout.size, 64) // 2
    batch = ds[len(ds) - 1]
    assert batch["inputs"].max() <= EOS and batch["inputs"].min() >= 0
