"""Byte-level tokenizer: token ids 0..255 are raw UTF-8 bytes, plus two specials."""

from __future__ import annotations

from typing import ClassVar

import numpy as np


class ByteTokenizer:
    """Maps text to its UTF-8 bytes and back.

    Ids 0..255 are bytes, ``eos_id`` (256) marks the end of a document and
    ``pad_id`` (257) fills unused positions; ``vocab_size`` is 258.
    """

    eos_id: ClassVar[int] = 256
    pad_id: ClassVar[int] = 257
    vocab_size: ClassVar[int] = 258

    def encode(self, text: str | bytes) -> np.ndarray:
        """Returns the UTF-8 bytes of ``text`` as int32 ids, shape [num_bytes]."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Returns the text for ``ids`` (any shape, flattened).

        Special ids are dropped; invalid UTF-8 becomes U+FFFD.
        """
        flat = np.asarray(ids).reshape(-1)
        byte_ids = flat[(flat >= 0) & (flat < 256)].astype(np.uint8)
        return byte_ids.tobytes().decode("utf-8", errors="replace")
