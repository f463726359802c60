"""Default training corpus: the Python standard library's own ``.py`` sources.

Nothing is downloaded: the files ship with the interpreter that runs training.
Each file becomes one document (its bytes followed by an eos token). Files are
taken in sorted relative-path order, so the corpus, the ``max_bytes`` prefix and
the held-out split are deterministic for a given Python installation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sysconfig

import numpy as np

from hybridlm.data.tokenizer import ByteTokenizer

# Directory names never entered: installed third-party code, test suites (which
# include deliberately malformed files) and bytecode caches.
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclasses.dataclass(frozen=True, eq=False)
class CorpusSplits:
    """Train and held-out token streams of the built-in corpus.

    Attributes:
      train: uint16 [num_train_tokens], training documents, each followed by eos.
      heldout: uint16 [num_heldout_tokens], held-out documents, same layout.
      num_train_docs: number of files in ``train``.
      num_heldout_docs: number of files in ``heldout``.
      source: the standard-library directory the files were read from.
    """

    train: np.ndarray
    heldout: np.ndarray
    num_train_docs: int
    num_heldout_docs: int
    source: str


def stdlib_dir() -> str:
    """Returns the directory holding the running interpreter's standard library."""
    return sysconfig.get_paths()["stdlib"]


def list_source_files(root: str) -> list[str]:
    """Returns the relative paths of all ``.py`` files under ``root``, sorted.

    Directories named in ``_SKIPPED_DIRS`` are not entered.
    """
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        rel_dir = os.path.relpath(dirpath, root)
        paths.extend(os.path.normpath(os.path.join(rel_dir, name)) for name in filenames if name.endswith(".py"))
    return sorted(paths)


def is_heldout(index: int, heldout_fraction: float) -> bool:
    """Whether the ``index``-th file (in sorted order) belongs to the held-out split.

    Marks the files at which ``floor(i * heldout_fraction)`` steps up, which spreads
    held-out files evenly through the corpus and keeps the assignment of a file
    independent of how many files follow it (so ``max_bytes`` only truncates).
    """
    return math.floor((index + 1) * heldout_fraction) > math.floor(index * heldout_fraction)


def _read_prefix(root: str, rel_paths: list[str], max_bytes: int | None) -> list[bytes]:
    """Reads files in order while their total size stays within ``max_bytes``."""
    contents = []
    total = 0
    for rel_path in rel_paths:
        path = os.path.join(root, rel_path)
        if max_bytes is not None and total + os.path.getsize(path) > max_bytes:
            break
        with open(path, "rb") as f:
            data = f.read()
        contents.append(data)
        total += len(data)
    return contents


def _to_stream(documents: list[bytes], eos_id: int) -> np.ndarray:
    """Concatenates documents into one uint16 stream, shape [sum(len(d) + 1)]."""
    eos = np.array([eos_id], dtype=np.uint16)
    parts = []
    for doc in documents:
        parts.append(np.frombuffer(doc, dtype=np.uint8))
        parts.append(eos)
    return np.concatenate(parts).astype(np.uint16, copy=False)


def load_builtin_corpus(max_bytes: int | None, heldout_fraction: float) -> CorpusSplits:
    """Builds the train / held-out byte-token streams from the stdlib sources.

    Args:
      max_bytes: cap on the total file bytes read (whole files, sorted order);
        ``None`` reads every file.
      heldout_fraction: fraction of files, in (0, 1), held out for evaluation.

    Returns:
      The two splits; no file contributes to both.

    Raises:
      ValueError: on bad arguments, or when the corpus or either split is empty.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(
            f"heldout_fraction must be in (0, 1), got {heldout_fraction}; " "set data.heldout_fraction to e.g. 0.05"
        )
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
    root = stdlib_dir()
    documents = _read_prefix(root, list_source_files(root), max_bytes)
    if not documents:
        raise ValueError(
            f"built-in corpus is empty: no .py file under {root} fits in "
            f"max_bytes={max_bytes}; raise data.max_bytes"
        )
    train_docs, heldout_docs = [], []
    for index, doc in enumerate(documents):
        (heldout_docs if is_heldout(index, heldout_fraction) else train_docs).append(doc)
    if not train_docs or not heldout_docs:
        raise ValueError(
            f"built-in corpus from {root} has {len(documents)} files "
            f"(max_bytes={max_bytes}), giving {len(train_docs)} train and "
            f"{len(heldout_docs)} held-out files with heldout_fraction="
            f"{heldout_fraction}; raise data.max_bytes or adjust data.heldout_fraction"
        )
    eos_id = ByteTokenizer.eos_id
    return CorpusSplits(
        train=_to_stream(train_docs, eos_id),
        heldout=_to_stream(heldout_docs, eos_id),
        num_train_docs=len(train_docs),
        num_heldout_docs=len(heldout_docs),
        source=root,
    )


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token frequency distribution of ``tokens`` (any shape).

    This is the cross-entropy a model ignoring all context would reach on the same
    stream, a reference point for the held-out loss.
    """
    flat = np.asarray(tokens).reshape(-1)
    if flat.size == 0:
        raise ValueError("unigram_entropy needs at least one token, got an empty array")
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range " f"[{flat.min()}, {flat.max()}]")
    counts = np.bincount(flat, minlength=vocab_size)
    probs = counts[counts > 0] / flat.size
    return float(-np.sum(probs * np.log(probs)))
