"""OLMo-style pre-tokenized token files: flat uint16/uint32 arrays, memory-mapped, with optional metadata.

Olmo's corpora (and ``tools/prepare_data.py``) store each shard as a headerless array of token ids in a ``.npy``
file, documents separated by the eos id. A file that does start with a numpy header is read through it. The
``metadata.json`` that ``prepare_data.py`` writes beside its files records their dtype, token counts, largest id and
tokenizer (name, eos token and id, vocab size; ``recorded_tokenizer``); when it describes a file, the file is not
scanned for out-of-range ids: only its first and last tokens are checked against the recorded largest id.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from hybridlm.data.stream import TokenStream
from hybridlm.data.tokenizer import TokenizerRecord

TOKEN_DTYPES = ("uint16", "uint32")
METADATA_FILE = "metadata.json"
METADATA_FORMAT = "hybridlm-token-files/1"
_NUMPY_MAGIC = b"\x93NUMPY"
_SCAN_CHUNK = 1 << 26  # tokens per step of the out-of-range scan
_SAMPLE = 1 << 16  # tokens read at the start (and end) of a file for the checks that do not scan it all
_MIN_DTYPE_SAMPLE = 32  # fewer leading tokens than this tell too little to call a uint16 file uint32
_TOKENIZER_KEYS = ("tokenizer", "eos_id", "vocab_size")  # and eos_token, which files made before it was kept lack


def dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest token dtype that holds ids below ``vocab_size``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_metadata(directory: pathlib.Path, metadata: dict[str, Any]) -> None:
    """Writes ``metadata.json`` (``format`` added) into ``directory``."""
    text = json.dumps({"format": METADATA_FORMAT, **metadata}, indent=2, sort_keys=True)
    (directory / METADATA_FILE).write_text(text + "\n")


def read_metadata(directory: str) -> dict[str, Any] | None:
    """The ``metadata.json`` of ``directory``, or None if it has none."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    metadata = json.loads(pathlib.Path(path).read_text())
    if metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"{path} is not a {METADATA_FORMAT} metadata file (format {metadata.get('format')!r})")
    missing = [key for key in _TOKENIZER_KEYS if key not in metadata]
    if missing:
        raise ValueError(
            f"{path} does not record the tokenizer's {', '.join(missing)}; rewrite it with: python "
            f"tools/prepare_data.py --index {directory} --dtype {metadata.get('dtype', 'DTYPE')} --tokenizer TOKENIZER"
        )
    return metadata


def recorded_tokenizer(files: list[str]) -> TokenizerRecord | None:
    """The tokenizer that the ``metadata.json`` files beside ``files`` record, or None when none of their directories
    has one. Raises ValueError when two directories record tokenizers of different eos ids or vocab sizes."""
    records = []
    for directory in dict.fromkeys(os.path.dirname(os.path.abspath(path)) for path in files):
        metadata = read_metadata(directory)
        if metadata is not None:
            where = f"the token files' {os.path.join(directory, METADATA_FILE)}"
            records.append(
                TokenizerRecord(
                    where, metadata["tokenizer"], metadata.get("eos_token"), metadata["eos_id"], metadata["vocab_size"]
                )
            )
    if not records:
        return None
    first = records[0]
    for other in records[1:]:
        if (other.eos_id, other.vocab_size) != (first.eos_id, first.vocab_size):
            raise ValueError(
                f"{first.where} records the tokenizer {first.name!r} (eos id {first.eos_id}, {first.vocab_size} ids) "
                f"but {other.where} records {other.name!r} (eos id {other.eos_id}, {other.vocab_size} ids); "
                "train on token files made with one tokenizer"
            )
    return first


def _open(path: str, dtype: str | None, metadata: dict[str, Any] | None) -> np.ndarray:
    """Memory-maps ``path`` as a 1-D array of ``dtype`` (or of its numpy header's or its directory's ``metadata``
    dtype), checking that they agree."""
    with open(path, "rb") as f:
        has_header = f.read(len(_NUMPY_MAGIC)) == _NUMPY_MAGIC
    if has_header:
        tokens = np.load(path, mmap_mode="r")
        if tokens.ndim != 1 or tokens.dtype.name not in TOKEN_DTYPES:
            raise ValueError(
                f"{path} holds a {tokens.dtype} array of shape {tokens.shape}, not flat uint16/uint32 tokens"
            )
        found = tokens.dtype.name
    else:
        found = dtype or (metadata or {}).get("dtype")
        if found is None:
            raise ValueError(
                f"{path} has no numpy header and no {METADATA_FILE} beside it to say its dtype; "
                f"set config.data.dtype to one of {TOKEN_DTYPES}"
            )
        size = os.path.getsize(path)
        if size % np.dtype(found).itemsize:
            raise ValueError(
                f"{path} has {size} bytes, not a whole number of {found} tokens; is config.data.dtype={dtype!r} right?"
            )
        tokens = np.memmap(path, dtype=found, mode="r") if size else np.zeros(0, found)
        if found == "uint16":
            _refuse_uint32_as_uint16(tokens, path)
    for what, expected in (("config.data.dtype", dtype), (f"its {METADATA_FILE}", (metadata or {}).get("dtype"))):
        if expected is not None and expected != found:
            raise ValueError(f"{path} holds {found} tokens but {what} says {expected}; fix config.data.dtype")
    return tokens


def _refuse_uint32_as_uint16(tokens: np.ndarray, path: str) -> None:
    """Refuses headerless uint32 ids read as uint16. Stored little-endian, each id's high half is the uint16 after it:
    0, or 1 for ids from 65536 to 131071, so every second value of the file's start is 0 or 1, which real uint16
    tokens never are over many tokens."""
    sample = tokens[:_SAMPLE]
    if sample.size >= _MIN_DTYPE_SAMPLE and (sample[1::2] <= 1).all() and (sample[0::2] > 1).any():
        raise ValueError(
            f"{path} looks like uint32 tokens read as uint16: every second uint16 of its first {sample.size} is 0 or "
            "1, as the high halves of uint32 ids are; set config.data.dtype='uint32'"
        )


def _check_recorded_max(tokens: np.ndarray, path: str, metadata: dict[str, Any], recorded: int) -> None:
    """Refuses a metadata entry whose max_token_id is below an id in the first or last tokens of its file: the entry
    is wrong, and the rest of the file, which it spares a scan, may hold ids past the vocab."""
    found = max(int(tokens[:_SAMPLE].max()), int(tokens[-_SAMPLE:].max()))
    if found > recorded:
        raise ValueError(
            f"{path} holds token id {found} but its {METADATA_FILE} says max_token_id={recorded}; rewrite the "
            f"metadata: python tools/prepare_data.py --index {os.path.dirname(os.path.abspath(path))} "
            f"--dtype {tokens.dtype.name} --tokenizer {metadata['tokenizer']}"
        )


def _check_tokens(tokens: np.ndarray, path: str, metadata: dict[str, Any] | None, vocab_size: int, eos_id: int) -> None:
    """Refuses ids at or above ``vocab_size`` (the largest id comes from the file's metadata entry when that matches
    the file and its ends, else from reading it all) and metadata made with another eos id."""
    if metadata is not None and metadata["eos_id"] != eos_id:
        raise ValueError(
            f"{path} was tokenized with eos id {metadata['eos_id']} (tokenizer {metadata['tokenizer']!r}) but "
            f"config.data.tokenizer gives eos id {eos_id}; set config.data.tokenizer to the one that made the files"
        )
    entry = (metadata or {}).get("files", {}).get(os.path.basename(path))
    if entry is not None and entry["num_tokens"] == tokens.size:
        largest = entry["max_token_id"]
        _check_recorded_max(tokens, path, metadata, largest)
    else:
        largest = _max_id(tokens)
    if largest >= vocab_size:
        position = int(np.argmax(tokens >= vocab_size)) if tokens.size <= _SCAN_CHUNK else None
        where = f" (first at token {position})" if position is not None and tokens[position] >= vocab_size else ""
        raise ValueError(
            f"{path} holds token id {largest}{where} but config.model.vocab_size={vocab_size}; "
            f"check config.data.dtype and that the files were made with the model's tokenizer"
        )


def _max_id(tokens: np.ndarray) -> int:
    return max((int(tokens[i : i + _SCAN_CHUNK].max()) for i in range(0, tokens.size, _SCAN_CHUNK)), default=0)


def file_entry(path: str, dtype: str, eos_id: int) -> dict[str, int]:
    """The ``metadata.json`` entry of an existing token file: its tokens, documents (eos count) and largest id."""
    tokens = _open(path, dtype, None)
    documents = sum(
        int(np.count_nonzero(tokens[i : i + _SCAN_CHUNK] == eos_id)) for i in range(0, tokens.size, _SCAN_CHUNK)
    )
    return {"num_tokens": int(tokens.size), "num_documents": documents, "max_token_id": _max_id(tokens)}


def open_token_files(files: list[str], *, dtype: str | None, vocab_size: int, eos_id: int, key: str) -> TokenStream:
    """The token files ``files``, memory-mapped and read as one stream.

    Every file is checked before any batch is cut: its dtype (``dtype``, its numpy header, its metadata), its size,
    its largest id against ``vocab_size`` and its metadata's eos id against ``eos_id``. Empty files are skipped.

    Raises:
      ValueError: naming the file and the value at fault, or ``key`` when every file is empty.
    """
    parts, names = [], []
    metadata_by_dir: dict[str, dict[str, Any] | None] = {}
    for path in files:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in metadata_by_dir:
            metadata_by_dir[directory] = read_metadata(directory)
        metadata = metadata_by_dir[directory]
        tokens = _open(path, dtype, metadata)
        if tokens.size == 0:
            continue
        _check_tokens(tokens, path, metadata, vocab_size, eos_id)
        parts.append(tokens)
        names.append(path)
    if not parts:
        raise ValueError(f"{key}: every file is empty ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})")
    return TokenStream(parts, names)
