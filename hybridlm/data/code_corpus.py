"""The scaling ladders' default corpus: the Python source on this machine, prepared locally into token files.

    python tools/prepare_data.py --corpus=python_code --out=DIR [--vocab_size=8192]

The documents are the ``.py`` files of the standard library and of `PACKAGES` (installed wherever hybridlm's test
extra is: its dependencies and theirs), one document a file, read as UTF-8 (bad bytes replaced). Files are taken in
the order of `source_roots` and sorted relative path, deduplicated by the SHA-256 of their bytes (the first copy
kept; empty files dropped), and split into training and held-out by that hash: a file is held out when its hash,
read as a fraction of 2^256, is below twice `HELDOUT_FRACTION`, whatever other files there are.

A byte-level BPE tokenizer (Hugging Face ``tokenizers``, `EOS_TOKEN` its one special token) is trained on the
training files only and saved beside the token files as ``tokenizer.json`` (with a ``tokenizer_config.json``
naming the eos). DIR gets ``part-00000.npy``, the training files' tokens, and ``part-00001.npy``, the held-out
files', each document followed by eos (headerless uint16), and ``metadata.json``, which records the tokenizer (so
a run on the files takes it from there), the packages' versions, and a fingerprint: the number of files, their
bytes, the tokens written and a SHA-256 over the files' sorted content hashes, so that two machines can tell whether
they prepared the same corpus.

The token_files source holds out the last ``config.data.heldout_fraction`` of the tokens
(hybridlm.data.stream.TokenStream.split). The held-out files' tokens are cut short so that this cut, at
`HELDOUT_FRACTION`, falls exactly between the two files: a run at that fraction trains on no held-out file and
evaluates on nothing else. (Held out at twice the rate, they hold more tokens than that needs, whatever the sizes of
the files; were they too few, the training tokens' tail would be cut instead.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from hybridlm.data.token_files import dtype_for_vocab, write_metadata
from hybridlm.data.tokenizer import HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE

NAME = "python_code"  # tools/prepare_data.py --corpus=python_code
PACKAGES = (
    "numpy", "scipy", "matplotlib", "jax", "flax", "optax", "orbax", "grain", "tensorflow_datasets", "absl",
    "ml_collections", "etils", "tqdm", "_pytest",
)  # fmt: skip
HELDOUT_FRACTION = 0.05
DEFAULT_VOCAB_SIZE = 8192
EOS_TOKEN = "<|endoftext|>"
_SKIPPED_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages"})
_ENCODE_BATCH = 256  # files tokenized per call


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One document: ``root`` (a name from `source_roots`) and its ``path`` in it, its bytes' SHA-256 and number,
    and its text."""

    root: str
    path: str
    digest: str
    size: int
    text: str


def source_roots(packages: Sequence[str] = PACKAGES) -> list[tuple[str, str]]:
    """(name, directory) of the standard library and of each package in ``packages``; ValueError naming a package
    that is not installed."""
    roots = [("stdlib", sysconfig.get_paths()["stdlib"])]
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"the corpus package {package!r} is not installed; install it (the default packages come with "
                "pip install -e '.[test]') or leave it out of --packages"
            )
        roots.append((package, list(spec.submodule_search_locations)[0]))
    return roots


def _python_files(directory: str) -> list[str]:
    """The ``.py`` files under ``directory`` (no hidden, cache or installed-package directories), relative, sorted."""
    found = []
    for root, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS and not d.startswith(".")]
        found.extend(os.path.relpath(os.path.join(root, f), directory) for f in filenames if f.endswith(".py"))
    return sorted(found)


def collect(roots: Sequence[tuple[str, str]]) -> list[SourceFile]:
    """The non-empty ``.py`` files of ``roots`` in order, each content once (its first path kept)."""
    seen: set[str] = set()
    files = []
    for name, directory in roots:
        for path in _python_files(directory):
            data = pathlib.Path(directory, path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if data and digest not in seen:
                seen.add(digest)
                files.append(SourceFile(name, path, digest, len(data), data.decode("utf-8", errors="replace")))
    if not files:
        raise ValueError(f"no .py files under {', '.join(d for _, d in roots)}; give directories of Python source")
    return files


def is_heldout(digest: str, fraction: float) -> bool:
    """Whether the file of SHA-256 ``digest`` (hex) is held out when ``fraction`` of the tokens are: its hash, as a
    fraction of 2^256, is below 2 x ``fraction``."""
    return int(digest, 16) < 2 * fraction * 2**256


def fingerprint(files: Sequence[SourceFile], num_tokens: int) -> dict[str, Any]:
    """What tells two preparations of the corpus apart: its files, bytes and tokens, and a hash of its contents."""
    contents = hashlib.sha256("\n".join(sorted(f.digest for f in files)).encode()).hexdigest()
    return {
        "files": len(files),
        "bytes": sum(f.size for f in files),
        "tokens": num_tokens,
        "content_sha256": contents,
    }


def train_tokenizer(texts: Callable[[], Iterator[str]], vocab_size: int, out: pathlib.Path) -> pathlib.Path:
    """Trains a byte-level BPE tokenizer of ``vocab_size`` ids (`EOS_TOKEN` included) on ``texts()`` and writes
    ``tokenizer.json`` and ``tokenizer_config.json`` into ``out``; returns the former."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(), trainer)
    path = out / HF_TOKENIZER_FILE
    tokenizer.save(str(path))
    (out / HF_TOKENIZER_CONFIG).write_text(json.dumps({"eos_token": EOS_TOKEN}) + "\n")
    return path


def _encode(files: Sequence[SourceFile], tokenizer: Any, eos_id: int) -> np.ndarray:
    """The files' tokens, each file's followed by ``eos_id``, as one int64 array [tokens]."""
    pieces = []
    for start in range(0, len(files), _ENCODE_BATCH):
        batch = [f.text for f in files[start : start + _ENCODE_BATCH]]
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            pieces.append(np.asarray(encoding.ids, np.int64))
            pieces.append(np.asarray([eos_id], np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def _largest(predicate: Callable[[int], bool], high: int) -> int:
    """The largest n in [0, high] with ``predicate(n)`` true, for a predicate true at 0 and false from some n on."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if predicate(middle) else (low, middle - 1)
    return low


def split_sizes(train: int, heldout: int, fraction: float) -> tuple[int, int]:
    """The tokens (t, h) to keep of ``train`` training and ``heldout`` held-out tokens so that TokenStream.split at
    ``fraction`` cuts the stream t + h exactly at t; the tail of only one split is trimmed."""

    def cut(total: int) -> int:
        return int(total * (1.0 - fraction))  # as TokenStream.split cuts

    if cut(train + heldout) >= train:  # more held-out tokens than needed: trim them
        return train, _largest(lambda h: cut(train + h) <= train, heldout)
    return _largest(lambda t: cut(t + heldout) >= t, train), heldout


def _write_part(out: pathlib.Path, name: str, tokens: np.ndarray, dtype: str, eos_id: int) -> dict[str, int]:
    """Writes ``tokens`` as a headerless ``dtype`` file; returns its metadata entry."""
    tokens.astype(dtype).tofile(out / name)
    return {
        "num_tokens": int(tokens.size),
        "num_documents": int(np.count_nonzero(tokens == eos_id)),
        "max_token_id": int(tokens.max()) if tokens.size else 0,
    }


def _versions(roots: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The installed distribution and version of each root package ("python X.Y.Z" for the standard library)."""
    distributions = importlib.metadata.packages_distributions()
    versions = {}
    for name, _ in roots:
        found = distributions.get(name, [])
        if name == "stdlib":
            versions[name] = f"python {platform.python_version()}"
        elif found:
            versions[name] = f"{found[0]} {importlib.metadata.version(found[0])}"
        else:
            versions[name] = "unknown"
    return versions


def prepare_code_corpus(
    out_dir: str | pathlib.Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    roots: Sequence[tuple[str, str]] | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
) -> dict[str, Any]:
    """Prepares the corpus of ``roots`` (default: `source_roots()`) into ``out_dir`` (created; must hold no token
    files yet) as the module docstring says; returns the metadata written."""
    import tokenizers

    from hybridlm.data.prepare import tokenizer_metadata

    if not 256 < vocab_size <= 1 << 16:
        raise ValueError(f"--vocab_size={vocab_size} must be in (256, 65536]: above the byte alphabet, uint16 ids")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("part-*.npy")):
        raise ValueError(f"--out {out} already holds token files; give an empty or new directory")
    roots = source_roots() if roots is None else roots
    files = collect(roots)
    train_files = [f for f in files if not is_heldout(f.digest, heldout_fraction)]
    heldout_files = [f for f in files if is_heldout(f.digest, heldout_fraction)]
    if not train_files or not heldout_files:
        raise ValueError(
            f"{len(files)} files split into {len(train_files)} training and {len(heldout_files)} held-out ones at "
            f"held-out fraction {heldout_fraction}; give more files"
        )
    path = train_tokenizer(lambda: (f.text for f in train_files), vocab_size, out)
    recorded = tokenizer_metadata(str(path), EOS_TOKEN)
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    train, heldout = (_encode(group, tokenizer, recorded["eos_id"]) for group in (train_files, heldout_files))
    keep_train, keep_heldout = split_sizes(train.size, heldout.size, heldout_fraction)
    dtype = dtype_for_vocab(recorded["vocab_size"])
    parts = {
        "part-00000.npy": _write_part(out, "part-00000.npy", train[:keep_train], dtype, recorded["eos_id"]),
        "part-00001.npy": _write_part(out, "part-00001.npy", heldout[:keep_heldout], dtype, recorded["eos_id"]),
    }
    num_tokens = keep_train + keep_heldout
    metadata = {
        "dtype": dtype,
        **recorded,
        "source": f"{NAME}: {', '.join(name for name, _ in roots)}",
        "num_tokens": num_tokens,
        "num_documents": sum(p["num_documents"] for p in parts.values()),
        "files": parts,
        "heldout_fraction": heldout_fraction,
        "heldout_files": len(heldout_files),
        "packages": _versions(roots),
        "fingerprint": {
            **fingerprint(files, num_tokens),
            "tokenizer_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
    }
    write_metadata(out, metadata)
    return metadata
