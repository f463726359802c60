"""Tokenizers: the built-in byte-level one, and Hugging Face `tokenizers` JSON files (e.g. Olmo's dolma2).

Both turn a list of documents into token ids and name the end-of-document id that separates documents in a packed
stream. ``load_tokenizer("byte")`` gives the byte tokenizer; any other name is a ``tokenizer.json`` file or a directory
holding one (as ``save_pretrained`` writes it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import ClassVar, Protocol, Sequence

import numpy as np

BYTE = "byte"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    eos_token: str | None  # None for the byte tokenizer, whose eos id stands for no text
    eos_id: int
    vocab_size: int

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, int32 [num_tokens_i] each, without special tokens."""


@dataclasses.dataclass(frozen=True)
class TokenizerRecord:
    """The tokenizer that some data was tokenized with, as recorded beside the data.

    Attributes:
      where: what records it, for messages, e.g. "the token files' data/corpus/metadata.json".
      name: the tokenizer as ``load_tokenizer`` takes it: "byte", or a Hugging Face tokenizer file or directory.
      eos_token: the Hugging Face tokenizer's end-of-document token; None for the byte tokenizer or when unrecorded.
      eos_id: the end-of-document id.
      vocab_size: number of ids.
    """

    where: str
    name: str
    eos_token: str | None
    eos_id: int
    vocab_size: int


class ByteTokenizer:
    """Maps text to its UTF-8 bytes and back.

    Ids 0..255 are bytes, ``eos_id`` (256) marks the end of a document and
    ``pad_id`` (257) fills unused positions; ``vocab_size`` is 258.
    """

    eos_token: ClassVar[None] = None
    eos_id: ClassVar[int] = 256
    pad_id: ClassVar[int] = 257
    vocab_size: ClassVar[int] = 258

    def encode(self, text: str | bytes) -> np.ndarray:
        """Returns the UTF-8 bytes of ``text`` as int32 ids, shape [num_bytes]."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Returns the text for ``ids`` (any shape, flattened).

        Special ids are dropped; invalid UTF-8 becomes U+FFFD.
        """
        flat = np.asarray(ids).reshape(-1)
        byte_ids = flat[(flat >= 0) & (flat < 256)].astype(np.uint8)
        return byte_ids.tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from its JSON file; documents are encoded without special tokens
    (as Olmo's data is) and the caller appends ``eos_id`` after each.

    Attributes:
      path: the ``tokenizer.json`` file.
      eos_token: the end-of-document token.
      eos_id: its id.
      vocab_size: number of ids, added tokens included.
    """

    def __init__(self, path: pathlib.Path, eos_token: str):
        import tokenizers  # Imported here: runs on the byte tokenizer never need it.

        self.path = path
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(
                f"config.data.tokenizer: {path} is not a Hugging Face tokenizer file ({e}); give 'byte' or a "
                "tokenizer.json that tokenizers.Tokenizer.from_file reads"
            ) from None
        eos_id = self._tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(
                f"the tokenizer {path} has no token {eos_token!r} to end documents with; "
                "set config.data.eos_token to its end-of-text token"
            )
        self.eos_token, self.eos_id = eos_token, eos_id
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self._tokenizer.decode(np.asarray(ids).reshape(-1).tolist())


def tokenizer_file(name: str) -> pathlib.Path:
    """The ``tokenizer.json`` that ``name`` (the file or its directory) refers to; raises ValueError if absent."""
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        path = path / HF_TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(
            f"config.data.tokenizer={name!r}: no such file {path}; give 'byte' or a Hugging Face tokenizer.json "
            "(or the directory holding it)"
        )
    return path


def _configured_eos_token(path: pathlib.Path) -> str | None:
    """The ``eos_token`` named by the ``tokenizer_config.json`` beside ``path``, if there is one."""
    config = path.parent / HF_TOKENIZER_CONFIG
    if not config.is_file():
        return None
    try:
        eos = json.loads(config.read_text()).get("eos_token")
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON ({e}); fix or delete it, or set config.data.eos_token") from None
    return eos.get("content") if isinstance(eos, dict) else eos


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str, eos_token: str | None = None) -> ByteTokenizer | HFTokenizer:
    """The tokenizer ``name`` names: "byte", or a Hugging Face tokenizer JSON file or directory.

    ``eos_token`` is the Hugging Face tokenizer's end-of-document token; when None it comes from the
    ``tokenizer_config.json`` beside the JSON file. Raises ValueError naming the file or token when either is missing.
    """
    if name == BYTE:
        return ByteTokenizer()
    path = tokenizer_file(name)
    eos_token = eos_token or _configured_eos_token(path)
    if eos_token is None:
        raise ValueError(
            f"the tokenizer {path} names no eos_token (no {HF_TOKENIZER_CONFIG} beside it says one); "
            "set config.data.eos_token, e.g. '<|endoftext|>' for Olmo's dolma2 tokenizer"
        )
    return HFTokenizer(path, eos_token)
