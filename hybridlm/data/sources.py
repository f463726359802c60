"""The data sources that `config.data.source` names, each registered in `SOURCES` with what it needs.

- ``builtin``: the standard-library corpus, byte tokens.
- ``token_files``: OLMo-style token files (``config.data.paths``: paths and globs; ``dtype``), tokenized with the
  tokenizer their ``metadata.json`` records.
- ``text``, ``jsonl``, ``array_record``: documents in files (``paths``), tokenized when the run starts.
- ``tfds``: a prepared tensorflow-datasets split (``tfds_name``, ``tfds_split``, ``tfds_data_dir``).
- ``task``: the examples of a synthetic task (``task``: a name of hybridlm.tasks.TASKS; ``task_args``), with their
  own targets and per-token loss mask.

A source reads one mixture group into its training and held-out token streams, or, a source of examples, returns
its training and held-out examples (hybridlm.data.task_batches). The run config is checked against
the table (hybridlm.config_checks) and the data read through it (hybridlm.data.pipeline); a new source is one more
``@register`` function here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ml_collections import config_dict

from hybridlm.data import documents as documents_lib
from hybridlm.data import paths as paths_lib
from hybridlm.data.builtin_corpus import load_builtin_corpus
from hybridlm.data.document_tokens import tokenize_splits
from hybridlm.data.stream import TokenStream
from hybridlm.data.task_batches import task_splits
from hybridlm.data.token_files import open_token_files, recorded_tokenizer
from hybridlm.data.tokenizer import BYTE, ByteTokenizer, Tokenizer, TokenizerRecord
from hybridlm.tasks import Task


@dataclasses.dataclass(frozen=True)
class Group:
    """One mixture group of a run's data.

    Attributes:
      key: how messages name it, e.g. "config.data.paths[1]".
      files: its files, expanded from paths and globs (none for the sources that take no paths).
      tokenizer: the run's tokenizer (None for the sources of examples, whose token ids are their own).
    """

    key: str
    files: list[str]
    tokenizer: Tokenizer | None


Reader = Callable[[config_dict.ConfigDict, Group], tuple[TokenStream, TokenStream] | tuple[Task, Task]]


def _tokenized_by_config(data: config_dict.ConfigDict) -> None:
    """Data that the configured tokenizer encodes records none of its own."""
    del data


@dataclasses.dataclass(frozen=True)
class Source:
    """One value of `config.data.source`.

    Attributes:
      read: (run config, group) -> the group's training and held-out token streams.
      takes_paths: whether it reads the files of `config.data.paths` (and so can mix groups of them by weight).
      needs: the other `config.data` keys it needs set, each with an example value for the error message.
      made_with: the tokenizer that its data, described by `config.data`, was already tokenized with (None when the
        run's tokenizer encodes it).
      examples: whether `read` gives the training and held-out examples (hybridlm.tasks.Task) instead of token
        streams.
    """

    read: Reader
    takes_paths: bool
    needs: tuple[tuple[str, str], ...]
    made_with: Callable[[config_dict.ConfigDict], TokenizerRecord | None]
    examples: bool = False


SOURCES: dict[str, Source] = {}


def register(
    name: str,
    *,
    takes_paths: bool,
    needs: tuple[tuple[str, str], ...] = (),
    made_with: Callable[[config_dict.ConfigDict], TokenizerRecord | None] = _tokenized_by_config,
    examples: bool = False,
) -> Callable[[Reader], Reader]:
    """Decorator: registers its function as the reader of the source `name` (see `Source` for the rest)."""

    def add(read: Reader) -> Reader:
        SOURCES[name] = Source(read, takes_paths, needs, made_with, examples)
        return read

    return add


def path_sources() -> tuple[str, ...]:
    """The sources that read `config.data.paths`."""
    return tuple(name for name, source in SOURCES.items() if source.takes_paths)


def _builtin_made_with(data: config_dict.ConfigDict) -> TokenizerRecord:
    del data
    return TokenizerRecord("the built-in corpus", BYTE, None, ByteTokenizer.eos_id, ByteTokenizer.vocab_size)


@register("builtin", takes_paths=False, made_with=_builtin_made_with)
def _builtin(config: config_dict.ConfigDict, group: Group) -> tuple[TokenStream, TokenStream]:
    corpus = load_builtin_corpus(config.data.max_bytes, config.data.heldout_fraction)
    return (
        TokenStream([corpus.train], ["built-in training split"]),
        TokenStream([corpus.heldout], ["built-in held-out split"]),
    )


def _token_files_made_with(data: config_dict.ConfigDict) -> TokenizerRecord | None:
    return recorded_tokenizer(paths_lib.expand_all(data.paths, "config.data.paths"))


@register("token_files", takes_paths=True, made_with=_token_files_made_with)
def _token_files(config: config_dict.ConfigDict, group: Group) -> tuple[TokenStream, TokenStream]:
    stream = open_token_files(
        group.files,
        dtype=config.data.dtype,
        vocab_size=config.model.vocab_size,
        eos_id=group.tokenizer.eos_id,
        key=group.key,
    )
    return stream.split(config.data.heldout_fraction)


@register("tfds", takes_paths=False, needs=(("tfds_name", "'wikipedia'"),))
@register("array_record", takes_paths=True)
@register("jsonl", takes_paths=True)
@register("text", takes_paths=True)  # the innermost decorator registers first
def _documents(config: config_dict.ConfigDict, group: Group) -> tuple[TokenStream, TokenStream]:
    """Documents (hybridlm.data.documents) tokenized in memory; every ``1 / heldout_fraction``-th one is held out."""
    spec = documents_lib.spec_from_config(config.data, tuple(group.files))
    documents = documents_lib.open_documents(spec)
    if len(documents) == 0:
        raise ValueError(f"{group.key}: the {spec.describe()} hold no documents")
    train, heldout = tokenize_splits(documents, group.tokenizer, config.data.heldout_fraction)
    return (
        TokenStream([train], [f"{spec.describe()}, training split"]),
        TokenStream([heldout], [f"{spec.describe()}, held-out split"]),
    )


@register("task", takes_paths=False, needs=(("task", "'parity'"),), examples=True)
def _task(config: config_dict.ConfigDict, group: Group) -> tuple[Task, Task]:
    """The training and held-out examples of the task `config.data.task` (hybridlm.data.task_batches.task_splits)."""
    del group
    return task_splits(config)
