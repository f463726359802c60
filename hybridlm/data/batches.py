"""Random-access language-model batches over token streams, built on grain.

Each stream (one per mixture group) is cut into non-overlapping windows of ``seq_len + 1`` tokens: documents are
concatenated and split, as Olmo packs them, and the tail shorter than a window is dropped. A window gives one row:
``inputs = window[:-1]``, ``targets = window[1:]``. Rows are shuffled globally (a fresh seeded order each epoch of
each group), groups are mixed by weight, rows are batched, and each process keeps its own slice of every batch.
``ds[step]`` is a pure function of (streams, seed, step), so a restarted run reads exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from hybridlm.data.stream import TokenStream


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Number of full ``seq_len + 1``-token windows in a stream of ``num_tokens``."""
    return num_tokens // (seq_len + 1)


def _shuffle_seed(seed: int, group: int) -> int:
    """Mixes ``seed`` and the group index into a 32-bit shuffle seed.

    grain reshuffles epoch ``e`` with seed ``s + e``; mixing keeps nearby user seeds (0, 1, ...) and groups from
    replaying each other's epochs shifted by one.
    """
    return int(np.random.SeedSequence((seed, group)).generate_state(1, dtype=np.uint32)[0])


class _ProcessSlice:
    """Global batch of window ids, int [batch_size] -> this process's rows, int [batch_size // process_count]."""

    def __init__(self, process_index: int, process_count: int, batch_size: int):
        self._rows = batch_size // process_count
        self._start = process_index * self._rows

    def __call__(self, window_ids: np.ndarray) -> np.ndarray:
        return window_ids[self._start : self._start + self._rows]


class _ReadWindows:
    """Window ids, int [rows] -> one batch: dict of int32 arrays, each [rows, seq_len].

    Global window ids number the windows of group 0, then of group 1, and so on; group g's start at
    ``first_ids[g]``.
    """

    def __init__(self, streams: list[TokenStream], first_ids: list[int], seq_len: int, eos_id: int, document_ids: bool):
        self._streams = streams
        self._first_ids = np.asarray(first_ids)
        self._width = seq_len + 1
        self._eos_id = eos_id
        self._document_ids = document_ids

    def __call__(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
        groups = np.searchsorted(self._first_ids, window_ids, side="right") - 1
        windows = np.empty((len(window_ids), self._width), np.int32)
        for row, (group, window_id) in enumerate(zip(groups.tolist(), window_ids.tolist())):
            start = (window_id - int(self._first_ids[group])) * self._width
            windows[row] = self._streams[group].read(start, start + self._width)
        inputs = np.ascontiguousarray(windows[:, :-1])
        return {
            "inputs": inputs,
            "targets": np.ascontiguousarray(windows[:, 1:]),
            "segment_ids": self._segments(inputs),
        }

    def _segments(self, inputs: np.ndarray) -> np.ndarray:
        """Document index per position, int32 [rows, seq_len]: 0 at each row's start, +1 after each eos."""
        if not self._document_ids:
            return np.zeros_like(inputs)
        after_eos = np.cumsum(inputs[:, :-1] == self._eos_id, axis=1, dtype=np.int32)
        return np.concatenate([np.zeros((len(inputs), 1), np.int32), after_eos], axis=1)


def _as_streams(tokens: TokenStream | np.ndarray | Sequence[TokenStream | np.ndarray], name: str) -> list[TokenStream]:
    if isinstance(tokens, (TokenStream, np.ndarray)):
        tokens = [tokens]
    streams = []
    for stream in tokens:
        if isinstance(stream, np.ndarray):
            if stream.ndim != 1:
                raise ValueError(f"{name} must be a 1-D token stream, got shape {stream.shape}")
            stream = TokenStream([stream], [name])
        streams.append(stream)
    return streams


def make_lm_dataset(
    tokens: TokenStream | np.ndarray | Sequence[TokenStream | np.ndarray],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    eos_id: int,
    document_ids: bool,
    weights: Sequence[float] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    name: str = "token stream",
) -> grain.MapDataset:
    """Returns a grain ``MapDataset`` whose element ``ds[step]`` is this process's part of global batch ``step``.

    Each batch is a dict of int32 arrays of shape [batch_size // process_count, seq_len]: ``inputs``, ``targets``
    (inputs shifted left by one) and ``segment_ids`` (per-row document index, +1 after each ``eos_id``; all zeros
    unless ``document_ids``). Process ``p`` gets rows ``[p * n, (p + 1) * n)`` of each global batch, ``n =
    batch_size // process_count``, so the processes' batches together are the global batch.

    With ``shuffle=True`` the dataset is infinite: every epoch of a group visits each of its windows exactly once
    in a new seeded order, and epochs follow each other in the row stream (a batch may straddle two epochs). Groups
    are interleaved in proportion to ``weights`` (default: their window counts), each repeating on its own. With
    ``shuffle=False`` it is one in-order pass over the groups' windows, ``len(ds)`` full batches; the leftover
    windows are dropped.

    Args:
      tokens: the token stream, or one per mixture group (1-D integer arrays or ``TokenStream``s).
      seq_len: tokens per row.
      batch_size: rows per global batch, a multiple of ``process_count``.
      seed: non-negative shuffle seed (unused when ``shuffle`` is False).
      shuffle: shuffled-and-repeated (training) or a single ordered pass (eval).
      eos_id: the end-of-document token id.
      document_ids: whether ``segment_ids`` number documents or are all zero.
      weights: the groups' mixture weights, positive, one per group.
      process_index: this process's index, in [0, process_count).
      process_count: how many processes share each batch.
      name: how error messages refer to ``tokens``, e.g. "held-out split".

    Raises:
      ValueError: on bad sizes, seed or weights, or when the streams hold fewer windows than one batch (or a group
        holds none).
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(
            f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, "
            f"batch_size={batch_size}; fix data.seq_len/data.batch_size"
        )
    if shuffle and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(f"batch_size={batch_size} cannot be split into process {process_index} of {process_count}")
    streams = _as_streams(tokens, name)
    if weights is not None and (len(weights) != len(streams) or min(weights) <= 0):
        raise ValueError(f"{name}: need one positive weight per group ({len(streams)}), got {tuple(weights)}")
    counts = [num_windows(s.size, seq_len) for s in streams]
    needed = batch_size * (seq_len + 1)
    total = sum(s.size for s in streams)
    if sum(counts) < batch_size:
        raise ValueError(
            f"{name} has {total} tokens but one batch needs "
            f"batch_size*(seq_len+1) = {batch_size}*({seq_len}+1) = {needed}; "
            "lower data.batch_size/data.seq_len or add data"
        )
    for group, (stream, count) in enumerate(zip(streams, counts)):
        if count == 0:
            raise ValueError(
                f"{name}: mixture group {group} ({stream.names[0]}, ...) has {stream.size} tokens, fewer than one "
                f"sequence of seq_len+1 = {seq_len + 1}; lower data.seq_len or add data to the group"
            )
    first = np.cumsum([0] + counts[:-1]).tolist()
    if shuffle:
        groups = [
            grain.MapDataset.range(start, start + count).shuffle(seed=_shuffle_seed(seed, group)).repeat()
            for group, (start, count) in enumerate(zip(first, counts))
        ]
        window_ids = groups[0] if len(groups) == 1 else grain.MapDataset.mix(groups, list(weights or counts))
    else:
        window_ids = grain.MapDataset.range(sum(counts))
    batches = window_ids.batch(batch_size, drop_remainder=True).map(
        _ProcessSlice(process_index, process_count, batch_size)
    )
    return batches.map(_ReadWindows(streams, first, seq_len, eos_id, document_ids))
