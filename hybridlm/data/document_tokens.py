"""The tokens of a document source, encoded through grain a batch of documents at a time, in order, eos after each
document: written to token files by ``prepare.py``, or split into training and held-out streams for a run that
reads documents directly."""

from __future__ import annotations

from typing import Any, Iterator

import grain
import numpy as np

from hybridlm.data.builtin_corpus import is_heldout
from hybridlm.data.token_files import dtype_for_vocab
from hybridlm.data.tokenizer import Tokenizer

DOCUMENTS_PER_BATCH = 256
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


class _Encode:
    """Documents -> their token ids, each int32 [num_tokens + 1] ending with eos."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._eos = np.array([tokenizer.eos_id], np.int32)

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        return [np.concatenate([ids, self._eos]) for ids in self._tokenizer.encode_batch(texts)]


def tokenized_documents(
    documents: Any, tokenizer: Tokenizer, start: int = 0, stop: int | None = None
) -> Iterator[np.ndarray]:
    """Yields the tokens of documents ``start`` to ``stop`` (default: the end) of ``documents`` in order, each an
    int32 array [num_tokens + 1] ending with ``tokenizer.eos_id``. Documents are read and encoded by grain, a batch
    of ``DOCUMENTS_PER_BATCH`` at a time, ahead of the consumer."""
    ds = grain.MapDataset.source(documents)[start:stop]
    ds = ds.batch(DOCUMENTS_PER_BATCH, batch_fn=list).map(_Encode(tokenizer))
    for batch in ds.to_iter_dataset(_READ_OPTIONS):
        yield from batch


def tokenize_splits(documents: Any, tokenizer: Tokenizer, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The documents as two token streams, training and held-out, each [num_tokens] in the narrowest dtype that fits
    the tokenizer. Documents at which ``floor(i * heldout_fraction)`` steps up are held out (as for the built-in
    corpus), so each document lands wholly in one split."""
    splits: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for index, tokens in enumerate(tokenized_documents(documents, tokenizer)):
        splits[is_heldout(index, heldout_fraction)].append(tokens)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    return tuple(np.concatenate(s).astype(dtype) if s else np.zeros(0, dtype) for s in splits)
