"""A run's data, from `config.data`: the source's token streams split into training and held-out, cut into batches.

`config.data.source` picks the source:

- ``builtin``: the standard-library corpus, byte tokens.
- ``token_files``: OLMo-style token files (``config.data.paths``: paths and globs; ``dtype``).
- ``text``, ``jsonl``, ``array_record``: documents in files (``paths``), tokenized when the run starts.
- ``tfds``: a prepared tensorflow-datasets split (``tfds_name``, ``tfds_split``, ``tfds_data_dir``).

Without ``config.data.weights`` every path belongs to one group; with it, each entry of ``paths`` is a mixture group
(a path or a glob) with its weight. Token files hold out the last ``heldout_fraction`` of each group's tokens,
document sources every ``1 / heldout_fraction``-th document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np
from ml_collections import config_dict

from hybridlm.data import documents as documents_lib
from hybridlm.data import paths as paths_lib
from hybridlm.data.batches import make_lm_dataset
from hybridlm.data.builtin_corpus import load_builtin_corpus
from hybridlm.data.stream import TokenStream
from hybridlm.data.token_files import open_token_files
from hybridlm.data.tokenize import tokenize_splits
from hybridlm.data.tokenizer import load_tokenizer

DATA_SOURCES = ("builtin", "token_files", *documents_lib.DOCUMENT_KINDS)
FILE_SOURCES = ("token_files", "text", "jsonl", "array_record")
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


def _file_groups(data: config_dict.ConfigDict) -> list[tuple[str, list[str]]]:
    """(config key, files) per mixture group: one group of every path, or one per path when weights are given."""
    if data.weights is None:
        return [("config.data.paths", paths_lib.expand_all(data.paths, "config.data.paths"))]
    return [
        (f"config.data.paths[{i}]", paths_lib.expand(p, f"config.data.paths[{i}]")) for i, p in enumerate(data.paths)
    ]


def _streams(config: config_dict.ConfigDict, eos_id: int) -> tuple[list[TokenStream], list[TokenStream]]:
    """The training and held-out token stream of each mixture group."""
    data = config.data
    if data.source == "builtin":
        corpus = load_builtin_corpus(data.max_bytes, data.heldout_fraction)
        return [TokenStream([corpus.train], ["built-in training split"])], [
            TokenStream([corpus.heldout], ["built-in held-out split"])
        ]
    tokenizer = load_tokenizer(data.tokenizer, data.eos_token)
    groups = [("config.data.tfds_name", [])] if data.source == "tfds" else _file_groups(data)
    train, heldout = [], []
    for key, files in groups:
        if data.source == "token_files":
            stream = open_token_files(
                files, dtype=data.dtype, vocab_size=config.model.vocab_size, eos_id=eos_id, key=key
            )
            train_part, heldout_part = stream.split(data.heldout_fraction)
        else:
            spec = documents_lib.spec_from_config(data, tuple(files))
            source = documents_lib.open_documents(spec)
            if len(source) == 0:
                raise ValueError(f"{key}: the {spec.describe()} hold no documents")
            train_tokens, heldout_tokens = tokenize_splits(source, tokenizer, data.heldout_fraction)
            train_part = TokenStream([train_tokens], [f"{spec.describe()}, training split"])
            heldout_part = TokenStream([heldout_tokens], [f"{spec.describe()}, held-out split"])
        train.append(train_part)
        heldout.append(heldout_part)
    return train, heldout


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
    eos_id = load_tokenizer(data.tokenizer, data.eos_token).eos_id
    train_streams, heldout_streams = _streams(config, eos_id)
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
