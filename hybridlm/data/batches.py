"""Random-access language-model batches over a flat token stream, built on grain.

The stream is cut into non-overlapping windows of ``seq_len + 1`` tokens
(concatenate-and-split packing; the tail shorter than a window is dropped). A
window gives one row: ``inputs = window[:-1]``, ``targets = window[1:]``.
``ds[step]`` is a pure function of (stream, seed, step), so a restarted run reads
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import grain
import numpy as np


class _WindowToRow:
    """Turns a window index into one row: dict of int32 arrays, each [seq_len]."""

    def __init__(self, tokens: np.ndarray, seq_len: int, eos_id: int, document_ids: bool):
        self._tokens = tokens
        self._seq_len = seq_len
        self._eos_id = eos_id
        self._document_ids = document_ids

    def __call__(self, window_index: int) -> dict[str, np.ndarray]:
        start = window_index * (self._seq_len + 1)
        window = self._tokens[start : start + self._seq_len + 1].astype(np.int32)
        inputs = window[:-1]
        return {
            "inputs": inputs,
            "targets": window[1:],
            "segment_ids": self._segment_ids(inputs),
        }

    def _segment_ids(self, inputs: np.ndarray) -> np.ndarray:
        """Document index per position, [seq_len]: 0 at the start, +1 after each eos."""
        if not self._document_ids:
            return np.zeros_like(inputs)
        after_eos = (inputs[:-1] == self._eos_id).astype(np.int32)
        return np.concatenate([np.zeros(1, np.int32), np.cumsum(after_eos, dtype=np.int32)])


def _shuffle_seed(seed: int) -> int:
    """Mixes ``seed`` into a 32-bit shuffle seed.

    grain reshuffles epoch ``e`` with seed ``s + e``; mixing keeps nearby user
    seeds (0, 1, ...) from replaying each other's epochs shifted by one.
    """
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Number of full ``seq_len + 1``-token windows in a stream of ``num_tokens``."""
    return num_tokens // (seq_len + 1)


def make_lm_dataset(
    tokens: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    eos_id: int,
    document_ids: bool,
    name: str = "token stream",
) -> grain.MapDataset:
    """Returns a grain ``MapDataset`` whose element ``ds[step]`` is one batch.

    Each batch is a dict of int32 arrays of shape [batch_size, seq_len]:
    ``inputs``, ``targets`` (inputs shifted left by one) and ``segment_ids``
    (per-row document index, +1 after each ``eos_id``; all zeros unless
    ``document_ids``).

    With ``shuffle=True`` the dataset is infinite: every epoch visits each window
    exactly once in a new seeded order, and epochs follow each other in the row
    stream (a batch may straddle two epochs). With ``shuffle=False`` it is one
    in-order pass, ``len(ds)`` full batches; the leftover windows are dropped.

    Args:
      tokens: 1-D integer token stream (e.g. uint16 from ``load_builtin_corpus``).
      seq_len: tokens per row.
      batch_size: rows per batch.
      seed: non-negative shuffle seed (unused when ``shuffle`` is False).
      shuffle: shuffled-and-repeated (training) or a single ordered pass (eval).
      eos_id: the end-of-document token id.
      document_ids: whether ``segment_ids`` number documents or are all zero.
      name: how error messages refer to ``tokens``, e.g. "held-out split".

    Raises:
      ValueError: on bad sizes or seed, or when ``tokens`` is shorter than one
        batch of windows.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(
            f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, "
            f"batch_size={batch_size}; fix data.seq_len/data.batch_size"
        )
    if shuffle and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{name} must be a 1-D token stream, got shape {tokens.shape}")
    needed = batch_size * (seq_len + 1)
    if tokens.size < needed:
        raise ValueError(
            f"{name} has {tokens.size} tokens but one batch needs "
            f"batch_size*(seq_len+1) = {batch_size}*({seq_len}+1) = {needed}; "
            "lower data.batch_size/data.seq_len or raise data.max_bytes"
        )
    windows = grain.MapDataset.range(num_windows(tokens.size, seq_len))
    if shuffle:
        windows = windows.shuffle(seed=_shuffle_seed(seed)).repeat()
    rows = windows.map(_WindowToRow(tokens, seq_len, eos_id, document_ids))
    return rows.batch(batch_size, drop_remainder=True)
