"""A run's data, from `config.data`: the source's token streams split into training and held-out, cut into batches.

`config.data.source` picks the source (hybridlm.data.sources lists them). Without ``config.data.weights`` every path
belongs to one group; with it, each entry of ``paths`` is a mixture group (a path or a glob) with its weight. Token
files hold out the last ``heldout_fraction`` of each group's tokens, document sources every
``1 / heldout_fraction``-th document.

The tokenizer is ``config.data.tokenizer`` (and ``eos_token``); unset, it is the one the data was made with (token
files: their ``metadata.json``), else the byte tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np
from ml_collections import config_dict

from hybridlm.data import paths as paths_lib
from hybridlm.data.batches import make_lm_dataset
from hybridlm.data.sources import SOURCES, Group
from hybridlm.data.stream import TokenStream
from hybridlm.data.task_batches import answer_entropy, make_task_dataset
from hybridlm.data.tokenizer import BYTE, Tokenizer, load_tokenizer

ENTROPY_SAMPLE_TOKENS = 1 << 24  # per group: the unigram entropy is measured on at most this many leading tokens


@dataclasses.dataclass(frozen=True)
class Data:
    """The run's batches: `train[step]` for every step; `heldout[i]` is a fixed sample of held-out windows.

    Attributes:
      train: this process's part of each training batch (see `make_lm_dataset`).
      heldout: the same for held-out batches.
      unigram_entropy: nats per token of the training data's token distribution (groups mixed by weight).
      fingerprint: JSON-able description of everything that decides the batches; a resumed run must match it.
    """

    train: grain.MapDataset
    heldout: grain.MapDataset
    unigram_entropy: float
    fingerprint: dict[str, Any]


def resolve_tokenizer(data: config_dict.ConfigDict, vocab_size: int) -> Tokenizer:
    """The run's tokenizer, filling in `data.tokenizer` and `data.eos_token` where unset (so that the recorded run
    config names it): each defaults to what the source's data was made with (token files: their metadata.json; the
    built-in corpus: byte), else to the byte tokenizer and its eos.

    Raises:
      ValueError: naming the key or file at fault, when the tokenizer does not load, is not the one the data was made
        with (another eos id or vocab size), or has more ids than the model's `vocab_size`.
    """
    record = SOURCES[data.source].made_with(data)
    name = data.tokenizer or (record.name if record else BYTE)
    eos_token = data.eos_token or (record.eos_token if record else None)
    try:
        tokenizer = load_tokenizer(name, eos_token)
    except ValueError as e:
        if data.tokenizer is None and record is not None:
            raise ValueError(f"{e} ({record.where} records this tokenizer)") from None
        raise
    if record is not None and (tokenizer.eos_id, tokenizer.vocab_size) != (record.eos_id, record.vocab_size):
        eos = f" ({tokenizer.eos_token!r})" if tokenizer.eos_token else ""
        raise ValueError(
            f"{record.where} records the tokenizer {record.name!r} (eos id {record.eos_id}, {record.vocab_size} ids) "
            f"but the run's tokenizer {name!r} has eos id {tokenizer.eos_id}{eos} and {tokenizer.vocab_size} ids; "
            "set config.data.tokenizer and config.data.eos_token to the tokenizer that made the data, or leave both "
            "unset to use the recorded one"
        )
    if tokenizer.vocab_size > vocab_size:
        made = f" (the one {record.where} records)" if record is not None else ""
        raise ValueError(
            f"config.model.vocab_size={vocab_size} is below the {tokenizer.vocab_size} ids of the tokenizer "
            f"{name!r}{made}; raise config.model.vocab_size to at least {tokenizer.vocab_size}"
        )
    data.tokenizer = name
    data.eos_token = data.eos_token or tokenizer.eos_token
    return tokenizer


def _groups(data: config_dict.ConfigDict, tokenizer: Tokenizer) -> list[Group]:
    """The mixture groups: one of every path, one per path when weights are given, or one without files for the
    sources that take no paths."""
    if not SOURCES[data.source].takes_paths:
        return [Group(f"config.data.source={data.source!r}", [], tokenizer)]
    if data.weights is None:
        return [Group("config.data.paths", paths_lib.expand_all(data.paths, "config.data.paths"), tokenizer)]
    keys = [f"config.data.paths[{i}]" for i in range(len(data.paths))]
    return [Group(key, paths_lib.expand(p, key), tokenizer) for key, p in zip(keys, data.paths)]


def mixture_unigram_entropy(streams: list[TokenStream], weights: tuple[float, ...] | None, vocab_size: int) -> float:
    """Entropy in nats of the groups' token distributions mixed by ``weights`` (default: by size), each measured on
    its first ``ENTROPY_SAMPLE_TOKENS`` tokens: the loss of a model that ignores context."""
    weights = np.asarray(weights if weights is not None else [s.size for s in streams], np.float64)
    probs = np.zeros(vocab_size)
    for stream, weight in zip(streams, weights / weights.sum()):
        sample = stream.head(ENTROPY_SAMPLE_TOKENS)
        probs += weight * np.bincount(sample, minlength=vocab_size)[:vocab_size] / max(sample.size, 1)
    probs = probs[probs > 0]
    return float(-np.sum(probs * np.log(probs)))


def load_data(config: config_dict.ConfigDict) -> Data:
    """Reads `config.data`'s source and cuts it into batches for this process.

    Raises:
      ValueError: naming the file or value at fault: a missing file or glob, a wrong dtype, a token id at or above
        `config.model.vocab_size`, an empty source, or a split too short for one batch.
    """
    data = config.data
    if SOURCES[data.source].examples:  # examples carry their own token ids: no tokenizer
        return _example_data(config)
    tokenizer = resolve_tokenizer(data, config.model.vocab_size)
    eos_id = tokenizer.eos_id
    streams = [SOURCES[data.source].read(config, group) for group in _groups(data, tokenizer)]
    train_streams, heldout_streams = [train for train, _ in streams], [heldout for _, heldout in streams]
    weights = tuple(data.weights) if data.weights is not None else None
    common = dict(
        seq_len=data.seq_len,
        batch_size=data.batch_size,
        seed=config.seed,
        shuffle=True,
        eos_id=eos_id,
        document_ids=data.document_mask,
        weights=weights,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    fingerprint = {
        "source": data.source,
        "seed": config.seed,
        "seq_len": data.seq_len,
        "batch_size": data.batch_size,
        "document_mask": data.document_mask,
        "eos_id": eos_id,
        "weights": list(weights) if weights is not None else None,
        "train": [s.describe() for s in train_streams],
        "heldout": [s.describe() for s in heldout_streams],
    }
    return Data(
        train=make_lm_dataset(train_streams, name="training split", **common),
        heldout=make_lm_dataset(heldout_streams, name="held-out split", **common),
        unigram_entropy=mixture_unigram_entropy(train_streams, weights, config.model.vocab_size),
        fingerprint=fingerprint,
    )


def _example_data(config: config_dict.ConfigDict) -> Data:
    """The batches of a source of examples (hybridlm.data.task_batches): each row one example, with its targets and
    loss mask."""
    data = config.data
    train, heldout = SOURCES[data.source].read(config, Group(f"config.data.source={data.source!r}", [], None))
    common = dict(batch_size=data.batch_size, process_index=jax.process_index(), process_count=jax.process_count())
    return Data(
        train=make_task_dataset(train, **common),
        heldout=make_task_dataset(heldout, **common),
        unigram_entropy=answer_entropy(train),
        fingerprint={
            "source": data.source,
            "batch_size": data.batch_size,
            "train": repr(train),
            "heldout": repr(heldout),
        },
    )


def first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """The first place (a dotted path and both values) where two fingerprints differ, or None if they are equal."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if saved == current else f"{path}: {saved!r} there, {current!r} now"
