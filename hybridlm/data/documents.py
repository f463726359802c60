"""Random-access sources of text documents, each a grain ``RandomAccessDataSource`` whose items are strings.

- ``text``: every file is one document.
- ``jsonl``: every non-empty line of every file is one JSON object; its ``text_field`` is the document.
- ``array_record``: every record of the ArrayRecord files is one UTF-8 document (read by grain's
  ``ArrayRecordDataSource``).
- ``tfds``: every example of a tensorflow-datasets split (read by ``tfds.data_source``, ArrayRecord-backed) is one
  document, its ``text_field`` feature.

``open_documents(spec)`` builds the source a ``DocumentSpec`` describes. Errors name the file (and line or record)
at fault.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

_INDEX_CHUNK = 1 << 26  # bytes read at a time while finding the lines of a JSONL file


@dataclasses.dataclass(frozen=True)
class DocumentSpec:
    """Where a run's documents come from (the fields of `config.data` that a document source needs).

    Attributes:
      kind: one of ``DOCUMENT_KINDS``.
      files: the files (already expanded from paths and globs); unused by ``tfds``.
      text_field: the JSON key (``jsonl``) or feature (``tfds``) holding the text.
      tfds_name: the tensorflow-datasets name, e.g. "wikipedia/20230601.en" (``tfds`` only).
      tfds_split: the split to read (``tfds`` only).
      tfds_data_dir: where the prepared dataset lives; None for tensorflow-datasets' default.
    """

    kind: str
    files: tuple[str, ...] = ()
    text_field: str = "text"
    tfds_name: str | None = None
    tfds_split: str = "train"
    tfds_data_dir: str | None = None

    def describe(self) -> str:
        if self.kind == "tfds":
            return f"tfds dataset {self.tfds_name!r} split {self.tfds_split!r}"
        more = f" and {len(self.files) - 1} more" if len(self.files) > 1 else ""
        return f"{self.kind} files {self.files[0]}{more}"


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text ({e})") from None


class TextFiles:
    """One document per file: the file's text."""

    def __init__(self, files: tuple[str, ...]):
        self._files = files

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> str:
        with open(self._files[index], "rb") as f:
            return _decode(f.read(), self._files[index])

    def __repr__(self) -> str:
        return f"TextFiles({len(self._files)} files)"


def _line_starts(path: str) -> np.ndarray:
    """Byte offsets of the non-empty lines of ``path``, int64 [num_lines + 1]; line i spans
    ``[starts[i], starts[i + 1])`` (its newline included) and the last entry is the file size."""
    size = os.path.getsize(path)
    newlines = [np.full(1, -1, np.int64)]
    with open(path, "rb") as f:
        for offset in range(0, size, _INDEX_CHUNK):
            chunk = np.frombuffer(f.read(_INDEX_CHUNK), np.uint8)
            newlines.append(np.flatnonzero(chunk == ord("\n")).astype(np.int64) + offset)
    bounds = np.concatenate([*newlines, [size]])
    starts, ends = bounds[:-1] + 1, bounds[1:]
    return np.concatenate([starts[ends > starts], [size]])


class JsonLines:
    """One document per non-empty line: ``json.loads(line)[text_field]``."""

    def __init__(self, files: tuple[str, ...], text_field: str):
        self._files = files
        self._field = text_field
        self._starts = [_line_starts(path) for path in files]
        self._ends = np.cumsum([len(s) - 1 for s in self._starts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> str:
        file_index = int(np.searchsorted(self._ends, index, side="right"))
        line = index - (int(self._ends[file_index - 1]) if file_index else 0)
        path, starts = self._files[file_index], self._starts[file_index]
        with open(path, "rb") as f:
            f.seek(starts[line])
            data = f.read(int(starts[line + 1] - starts[line]))
        where = f"{path}:{self._line_number(path, int(starts[line]))}"
        try:
            record = json.loads(data)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not a JSON object ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get(self._field), str):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where} has no string field {self._field!r} (found {keys}); set config.data.text_field")
        return record[self._field]

    @staticmethod
    def _line_number(path: str, offset: int) -> int:
        with open(path, "rb") as f:
            return f.read(offset).count(b"\n") + 1

    def __repr__(self) -> str:
        return f"JsonLines({len(self._files)} files, field={self._field!r})"


class ArrayRecordDocuments:
    """One document per ArrayRecord record, its bytes read as UTF-8."""

    def __init__(self, files: tuple[str, ...]):
        import grain  # Deferred like the other readers: only this source needs the ArrayRecord bindings.

        self._files = files
        self._source = grain.sources.ArrayRecordDataSource(list(files))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        return _decode(self._source[index], f"record {index} of the ArrayRecord files {self._files[0]}, ...")

    def __repr__(self) -> str:
        return f"ArrayRecordDocuments({len(self._files)} files)"


class TfdsDocuments:
    """One document per example of a prepared tensorflow-datasets split, read through ``tfds.data_source``."""

    def __init__(self, name: str, split: str, data_dir: str | None, text_field: str):
        import tensorflow_datasets as tfds  # Slow to import, and only this source needs it.

        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types, with multi-line messages listing every dataset.
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"config.data.tfds_name={name!r} split {split!r} (data dir {data_dir or 'default'}) "
                f"cannot be read: {first_line}"
            ) from None
        features = self._source.dataset_info.features
        if text_field not in features:
            raise ValueError(
                f"tfds dataset {name!r} has no feature {text_field!r} (features: {sorted(features.keys())}); "
                "set config.data.text_field"
            )
        self._name, self._field = name, text_field

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        value = self._source[index][self._field]
        return _decode(value, f"example {index} of tfds dataset {self._name!r}") if isinstance(value, bytes) else value

    def __repr__(self) -> str:
        return f"TfdsDocuments({self._name!r}, field={self._field!r})"


_OPENERS: dict[str, Callable[[DocumentSpec], Any]] = {
    "text": lambda spec: TextFiles(spec.files),
    "jsonl": lambda spec: JsonLines(spec.files, spec.text_field),
    "array_record": lambda spec: ArrayRecordDocuments(spec.files),
    "tfds": lambda spec: TfdsDocuments(spec.tfds_name, spec.tfds_split, spec.tfds_data_dir, spec.text_field),
}
DOCUMENT_KINDS = tuple(_OPENERS)


def open_documents(spec: DocumentSpec) -> Any:
    """The document source ``spec`` describes: ``len(source)`` documents, ``source[i]`` a string."""
    if spec.kind not in _OPENERS:
        raise ValueError(f"unknown document source kind {spec.kind!r}; use one of {DOCUMENT_KINDS}")
    return _OPENERS[spec.kind](spec)


def spec_from_config(data: Any, files: tuple[str, ...]) -> DocumentSpec:
    """The ``DocumentSpec`` of `config.data` (``files`` expanded from its paths by the caller)."""
    return DocumentSpec(
        kind=data.source,
        files=files,
        text_field=data.text_field,
        tfds_name=data.tfds_name,
        tfds_split=data.tfds_split,
        tfds_data_dir=data.tfds_data_dir,
    )
