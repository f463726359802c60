"""A token stream: several 1-D token arrays (memory-mapped files or in-memory) read as one concatenation."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np


class TokenStream:
    """The tokens ``[start, stop)`` of the concatenation of ``parts``, read by range without copying the rest.

    Documents are separated by eos tokens inside the parts, so a read that crosses from one part into the next is
    still a valid stretch of text.

    Attributes:
      names: one name per part (a file path, or a description of in-memory tokens), for messages.
      size: number of tokens in the stream.
    """

    def __init__(self, parts: Sequence[np.ndarray], names: Sequence[str], start: int = 0, stop: int | None = None):
        if len(parts) != len(names) or not parts:
            raise ValueError(f"a token stream needs one name per part and at least one part, got {len(names)} names")
        self._parts = list(parts)
        self.names = list(names)
        self._ends = np.cumsum([p.size for p in parts], dtype=np.int64)
        self._start = start
        self._stop = int(self._ends[-1]) if stop is None else stop
        if not 0 <= self._start <= self._stop <= self._ends[-1]:
            raise ValueError(f"token range [{start}, {stop}) is outside a stream of {self._ends[-1]} tokens")
        self.size = self._stop - self._start

    def split(self, fraction: float) -> tuple[TokenStream, TokenStream]:
        """The first ``1 - fraction`` of the tokens and the rest, as two streams over the same parts."""
        cut = self._start + int(self.size * (1.0 - fraction))
        return (
            TokenStream(self._parts, self.names, self._start, cut),
            TokenStream(self._parts, self.names, cut, self._stop),
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream, in the parts' dtype, shape [stop - start]."""
        start, stop = start + self._start, stop + self._start
        first = int(np.searchsorted(self._ends, start, side="right"))
        pieces = []
        while start < stop:
            part_start = int(self._ends[first - 1]) if first else 0
            end = min(stop, int(self._ends[first]))
            pieces.append(self._parts[first][start - part_start : end - part_start])
            start, first = end, first + 1
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else self._parts[0][:0]

    def head(self, max_tokens: int) -> np.ndarray:
        """The first ``min(size, max_tokens)`` tokens."""
        return self.read(0, min(self.size, max_tokens))

    def describe(self) -> dict[str, Any]:
        """What the stream holds, for checking that a resumed run reads the same data: the parts' base names and
        sizes for memory-mapped files, a content hash for in-memory tokens, and the token range."""
        parts = []
        for part, name in zip(self._parts, self.names):
            if isinstance(part, np.memmap):
                parts.append({"file": os.path.basename(name), "tokens": int(part.size)})
            else:
                digest = hashlib.blake2b(np.ascontiguousarray(part).view(np.uint8), digest_size=16).hexdigest()
                parts.append({"data": name, "tokens": int(part.size), "blake2b": digest})
        return {"parts": parts, "range": [self._start, self._stop]}
