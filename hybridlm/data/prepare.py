"""Tokenizes documents into OLMo-style token files plus a ``metadata.json``, in parallel (``tools/prepare_data.py``),
or writes the ``metadata.json`` of token files made elsewhere (such as Olmo's).

The input is a directory of text and JSONL files, or a prepared tensorflow-datasets split. It is cut into parts:
each JSONL file is one part, consecutive text files are grouped into parts of about ``part_bytes``, and a tfds
split is cut into ranges of examples. Worker processes tokenize the parts (documents in order, eos after each) and
write ``part-00000.npy``, ``part-00001.npy``, ... as headerless uint16/uint32 arrays, the numbering following the
input order whatever the scheduling. The metadata records the dtype, the tokenizer (its path, eos token and id, and
vocab size), and each file's token and document counts and largest id. The trainer reads these instead of scanning
the files, and takes the tokenizer as the run's unless ``config.data.tokenizer`` names one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import pathlib
from typing import Any, Iterator

import tqdm

from hybridlm.data.documents import DocumentSpec, open_documents
from hybridlm.data.token_files import dtype_for_vocab, file_entry, write_metadata
from hybridlm.data.document_tokens import tokenized_documents
from hybridlm.data.tokenizer import BYTE, load_tokenizer

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PART_BYTES = 1 << 28  # text bytes grouped into one part
TFDS_PARTS_PER_WORKER = 4


@dataclasses.dataclass(frozen=True)
class Part:
    """Documents ``[start, stop)`` of the source ``spec`` describes (``stop`` None: to its end), written as
    ``part-<index>.npy``."""

    index: int
    spec: DocumentSpec
    start: int = 0
    stop: int | None = None


def input_files(directory: str) -> list[str]:
    """Every regular, non-hidden file under ``directory``, sorted by relative path."""
    files = []
    for root, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(root, name) for name in filenames if not name.startswith("."))
    return sorted(files, key=lambda path: os.path.relpath(path, directory))


def directory_parts(directory: str, text_field: str, part_bytes: int = PART_BYTES) -> list[Part]:
    """The parts of a directory: one per JSONL file, and runs of text files of up to ``part_bytes`` each."""
    if not os.path.isdir(directory):
        raise ValueError(f"--input {directory}: no such directory")
    parts: list[Part] = []
    run: list[str] = []
    run_bytes = 0

    def close_run() -> None:
        nonlocal run, run_bytes
        if run:
            parts.append(Part(len(parts), DocumentSpec("text", tuple(run))))
        run, run_bytes = [], 0

    for path in input_files(directory):
        if path.endswith(JSONL_SUFFIXES):
            close_run()
            parts.append(Part(len(parts), DocumentSpec("jsonl", (path,), text_field=text_field)))
            continue
        if run and run_bytes + os.path.getsize(path) > part_bytes:
            close_run()
        run.append(path)
        run_bytes += os.path.getsize(path)
    close_run()
    if not parts:
        raise ValueError(f"--input {directory}: no files to tokenize")
    return parts


def tfds_parts(spec: DocumentSpec, workers: int) -> list[Part]:
    """Ranges of examples of a tfds split, a few per worker."""
    size = len(open_documents(spec))
    if size == 0:
        raise ValueError(f"the {spec.describe()} holds no examples")
    step = -(-size // (workers * TFDS_PARTS_PER_WORKER))
    return [Part(i, spec, start, min(start + step, size)) for i, start in enumerate(range(0, size, step))]


@functools.lru_cache(maxsize=4)
def _documents(spec: DocumentSpec) -> Any:
    return open_documents(spec)


def _tokenize_part(part: Part, out_dir: str, tokenizer_name: str, eos_token: str | None) -> dict[str, Any]:
    """Writes one part's token file; returns its metadata entry (name, tokens, documents, largest id)."""
    tokenizer = load_tokenizer(tokenizer_name, eos_token)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    name = f"part-{part.index:05d}.npy"
    num_tokens = num_documents = max_token_id = 0
    with open(os.path.join(out_dir, name), "wb") as f:
        for tokens in tokenized_documents(_documents(part.spec), tokenizer, part.start, part.stop):
            f.write(tokens.astype(dtype).tobytes())
            num_tokens += tokens.size
            num_documents += 1
            max_token_id = max(max_token_id, int(tokens.max()))
    return {"name": name, "num_tokens": num_tokens, "num_documents": num_documents, "max_token_id": max_token_id}


def _worker_init() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # The workers are the parallelism.


def _run(work: Any, parts: list[Part], workers: int) -> Iterator[dict[str, Any]]:
    """``work(part)`` for each part, in part order, in ``workers`` processes (or in this one when 1)."""
    if workers == 1:
        yield from map(work, parts)
        return
    context = multiprocessing.get_context("spawn")  # Safe with the threads grain and tokenizers start.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        yield from pool.map(work, parts)


def tokenizer_metadata(name: str, eos_token: str | None) -> dict[str, Any]:
    """The ``metadata.json`` fields that record the tokenizer, which a run on the files then takes as its own: its
    name ("byte", or a Hugging Face tokenizer's absolute path, found from wherever the run starts), its eos token and
    id, and its vocab size."""
    tokenizer = load_tokenizer(name, eos_token)
    return {
        "tokenizer": name if name == BYTE else os.path.abspath(os.path.expanduser(name)),
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_id,
        "vocab_size": tokenizer.vocab_size,
    }


def prepare(
    parts: list[Part], out_dir: str | pathlib.Path, *, tokenizer: str, eos_token: str | None, workers: int, source: str
) -> dict[str, Any]:
    """Tokenizes ``parts`` into token files in ``out_dir`` (created; must hold no token files yet) with a progress
    bar, writes ``metadata.json`` and returns it. ``source`` describes the input for the metadata."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("part-*.npy")):
        raise ValueError(f"--out {out} already holds token files; give an empty or new directory")
    recorded = tokenizer_metadata(tokenizer, eos_token)
    files = []
    progress = tqdm.tqdm(total=len(parts), desc="tokenizing", unit="part", dynamic_ncols=True)
    with progress:
        work = functools.partial(_tokenize_part, out_dir=str(out), tokenizer_name=tokenizer, eos_token=eos_token)
        for entry in _run(work, parts, max(1, min(workers, len(parts)))):
            files.append(entry)
            progress.update(1)
            progress.set_postfix(tokens=sum(f["num_tokens"] for f in files))
    metadata = {
        "dtype": dtype_for_vocab(recorded["vocab_size"]),
        **recorded,
        "source": source,
        "num_tokens": sum(f["num_tokens"] for f in files),
        "num_documents": sum(f["num_documents"] for f in files),
        "files": {f.pop("name"): f for f in files},
    }
    write_metadata(out, metadata)
    return metadata


def index(directory: str | pathlib.Path, *, dtype: str, tokenizer: str, eos_token: str | None) -> dict[str, Any]:
    """Writes the ``metadata.json`` of the ``*.npy`` token files already in ``directory`` (read once, with a
    progress bar), so that training need not scan them; returns it."""
    directory = pathlib.Path(directory)
    files = sorted(directory.glob("*.npy"))
    if not files:
        raise ValueError(f"--index {directory}: no *.npy token files there")
    recorded = tokenizer_metadata(tokenizer, eos_token)
    entries = {
        path.name: file_entry(str(path), dtype, recorded["eos_id"]) for path in tqdm.tqdm(files, desc="indexing")
    }
    metadata = {
        "dtype": dtype,
        **recorded,
        "source": str(directory.absolute()),
        "num_tokens": sum(e["num_tokens"] for e in entries.values()),
        "num_documents": sum(e["num_documents"] for e in entries.values()),
        "files": entries,
    }
    write_metadata(directory, metadata)
    return metadata
