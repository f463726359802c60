"""Perplexity and bits per byte of a model on documents: text files, JSONL files or prepared token files.

Each document is scored on its own. Its tokens follow the tokenizer's eos id (the separator the model saw before every
document in training), so every token of the document is predicted, the first included, and nothing after its last.
A document longer than `seq_len` tokens is scored in windows of at most `seq_len` input tokens: the first window
scores all its targets; each later one ends `stride` tokens further on and scores only its last `stride` targets, the
tokens before them being context. Every token is scored exactly once, from the second window on with at least
`seq_len - stride` tokens of context; no state carries from one window to the next. The default stride, `seq_len`,
gives non-overlapping windows.

Windows are the rows of batches of one shape, [batch_size, seq_len], right-padded (the model is causal, so padding
after a row's tokens changes nothing before them) with a mask over the scored targets: one compile serves a whole run.

loss = total nats / scored tokens; perplexity = exp(loss); bits per byte = total nats / ln 2 / total UTF-8 bytes of
the scored documents' text (for token files, the text the run's tokenizer decodes them to).

Command line:

  python -m hybridlm.perplexity --model=WORKDIR_OR_HF_DIR --data=heldout.jsonl [--text_field=text]
  python -m hybridlm.perplexity --model=... --data='tokens/*.npy' --seq_len=2048 --stride=1024 --batch_size=8
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import pathlib
import sys
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags
from flax import nnx

from hybridlm.api import Model, load_model
from hybridlm.data import documents as documents_lib
from hybridlm.data import paths
from hybridlm.data.stream import TokenStream
from hybridlm.data.token_files import open_token_files
from hybridlm.data.tokenizer import HF_TOKENIZER_FILE, ByteTokenizer, HFTokenizer, load_tokenizer

FORMATS = ("text", "jsonl", "tokens")
_TOKEN_SUFFIXES = (".npy", ".bin")
_ENCODE_BATCH = 64  # documents encoded per call of the tokenizer
_READ_CHUNK = 1 << 22  # tokens read at a time while splitting token files into documents


@dataclasses.dataclass(frozen=True)
class Document:
    """One document to score: its token ids, int [num_tokens], and the UTF-8 bytes of its text."""

    tokens: np.ndarray
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Totals over the scored documents: `nats` (the summed negative log-likelihood), `tokens`, `bytes`, `documents`."""

    nats: float
    tokens: int
    bytes: int
    documents: int

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood, nats per token."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score(
    graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """tokens, targets: int32 [B, T] -> (log-probability of each target, float32 [B, T]; whether each target is the
    most likely token, bool [B, T]). Holds the float32 logits [B, T, vocab] once."""
    logits = nnx.merge(graphdef, state)(tokens)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0], jnp.argmax(logits, -1) == targets


class Scorer:
    """Scores rows of tokens with a model's full forward: `scorer(tokens, targets)` for int [B, T] arrays (one
    document per row; a compile per distinct shape)."""

    def __init__(self, model: Model):
        self.config = model.config
        self._graphdef, self._state = nnx.split(model.module())

    def __call__(self, tokens: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens, targets: int [B, T] -> (log-probabilities of the targets float32 [B, T], greedy bool [B, T]).
        Raises ValueError for a token id outside the model's vocab or rows longer than it takes."""
        self.config.check_seq_len(tokens.shape[1])
        largest = int(max(tokens.max(), targets.max()))
        if largest >= self.config.vocab_size or min(tokens.min(), targets.min()) < 0:
            raise ValueError(
                f"token id {largest} is outside the model's vocab of {self.config.vocab_size} "
                "(config.model.vocab_size); use the tokenizer the model was trained with"
            )
        logprobs, greedy = _score(self._graphdef, self._state, jnp.asarray(tokens, jnp.int32), targets.astype(np.int32))
        return np.asarray(logprobs), np.asarray(greedy)


def windows(sequence: np.ndarray, seq_len: int, stride: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """The scoring windows of `sequence`, int [n + 1]: the eos id then a document's n >= 1 tokens.

    Yields (inputs int [w], targets int [w], first) with w <= seq_len: targets are the inputs shifted by one, and only
    targets[first:] are scored. Together the windows score sequence[1:] once each (see the module docstring).
    """
    start, end = 1, min(seq_len, sequence.size - 1) + 1  # the scored targets are sequence[start:end]
    while start < end:
        begin = max(0, end - 1 - seq_len)
        yield sequence[begin : end - 1], sequence[begin + 1 : end], start - begin - 1
        start, end = end, min(end + stride, sequence.size)


def evaluate_perplexity(
    model: Model,
    documents: Iterable[Document],
    seq_len: int,
    batch_size: int,
    *,
    eos_id: int,
    stride: int | None = None,
    progress: tqdm.tqdm | None = None,
) -> PerplexityResult:
    """Scores `documents`, each after `eos_id`, in windows of `seq_len` tokens that end `stride` tokens apart
    (default seq_len: non-overlapping), `batch_size` windows a batch [batch_size, seq_len]. `progress`, if given,
    counts finished documents. Raises ValueError for a bad seq_len, batch_size or stride, a token id outside the
    vocab, or documents that hold no tokens."""
    model.config.check_seq_len(seq_len)
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride={stride} must be in [1, seq_len={seq_len}]; use seq_len for non-overlapping windows")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    scorer = Scorer(model)
    nats, tokens, num_bytes, count = 0.0, 0, 0, 0
    batch: list[tuple[np.ndarray, np.ndarray, int, bool]] = []  # (inputs, targets, first scored, document's last)

    def flush() -> float:
        inputs = np.zeros((batch_size, seq_len), np.int32)
        targets = np.zeros((batch_size, seq_len), np.int32)
        mask = np.zeros((batch_size, seq_len), bool)
        for row, (window_inputs, window_targets, first, _) in enumerate(batch):
            inputs[row, : window_inputs.size], targets[row, : window_targets.size] = window_inputs, window_targets
            mask[row, first : window_targets.size] = True
        logprobs, _ = scorer(inputs, targets)
        if progress is not None:
            progress.update(sum(last for *_, last in batch))
        batch.clear()
        return -float(np.sum(logprobs, where=mask, dtype=np.float64))

    for document in documents:
        if not document.tokens.size:
            continue
        sequence = np.concatenate([[eos_id], document.tokens]).astype(np.int32)
        document_windows = list(windows(sequence, seq_len, stride))
        for i, window in enumerate(document_windows):
            batch.append((*window, i == len(document_windows) - 1))
            if len(batch) == batch_size:
                nats += flush()
        tokens, num_bytes, count = tokens + document.tokens.size, num_bytes + document.num_bytes, count + 1
        if progress is not None:
            progress.set_postfix(ppl=f"{math.exp(nats / tokens):.4g}" if nats else "-", refresh=False)
    if batch:
        nats += flush()
    if not tokens:
        raise ValueError("the documents hold no tokens to score; check --data (and --text_field for JSONL)")
    return PerplexityResult(nats, tokens, num_bytes, count)


def model_tokenizer(model: Model, path: str | pathlib.Path, name: str | None = None) -> ByteTokenizer | HFTokenizer:
    """The tokenizer `name` names, else the run's (config.data.tokenizer), else the tokenizer.json in `path` (a
    Hugging Face directory that an export wrote it into). Raises ValueError when there is none."""
    if name:
        return load_tokenizer(name)
    if model.run_config.get("data", {}).get("tokenizer"):
        return model.tokenizer()
    if (pathlib.Path(path) / HF_TOKENIZER_FILE).is_file():
        return load_tokenizer(str(path))
    raise ValueError(f"{path} names no tokenizer and holds no {HF_TOKENIZER_FILE}; pass --tokenizer=byte or a file")


def text_documents(texts: Iterable[str], tokenizer: ByteTokenizer | HFTokenizer) -> Iterator[Document]:
    """`texts` encoded with `tokenizer` (without special tokens), each with its UTF-8 byte count."""
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, _ENCODE_BATCH)):
        for text, ids in zip(chunk, tokenizer.encode_batch(chunk)):
            yield Document(ids, len(text.encode("utf-8")))


def token_file_documents(stream: TokenStream, tokenizer: ByteTokenizer | HFTokenizer) -> Iterator[Document]:
    """The documents of a token stream, the runs of tokens between its eos ids, each with the UTF-8 byte count of the
    text `tokenizer` decodes it to. Empty runs (two eos ids in a row) are skipped."""
    pending: list[np.ndarray] = []
    for start in range(0, stream.size, _READ_CHUNK):
        chunk = np.asarray(stream.read(start, min(start + _READ_CHUNK, stream.size)))
        ends = np.flatnonzero(chunk == tokenizer.eos_id)
        begin = 0
        for end in ends:
            pending.append(chunk[begin:end])
            yield _token_document(np.concatenate(pending), tokenizer)
            pending, begin = [], end + 1
        pending.append(chunk[begin:])
    yield _token_document(np.concatenate(pending), tokenizer)


def _token_document(ids: np.ndarray, tokenizer: ByteTokenizer | HFTokenizer) -> Document:
    return Document(ids.astype(np.int32), len(tokenizer.decode(ids).encode("utf-8")) if ids.size else 0)


def define_flags() -> None:
    """Defines the command line's flags (only `python -m hybridlm.perplexity` calls it)."""
    flags.DEFINE_string("model", None, "A training workdir or a Hugging Face directory (hybridlm.api.load_model).")
    flags.DEFINE_list("data", None, "Files or globs: text files (one document each), JSONL or token files.")
    flags.DEFINE_enum("format", None, FORMATS, "The files' format; default from the first file's suffix "
                      f"({', '.join(_TOKEN_SUFFIXES)}: tokens, .jsonl: jsonl, else text).")
    flags.DEFINE_string("text_field", "text", "The JSONL field that holds each document's text.")
    flags.DEFINE_string("token_dtype", None, "uint16 or uint32 for token files without a header or metadata.json.")
    flags.DEFINE_string("tokenizer", None, "Default: the run's config.data.tokenizer, or the HF directory's own.")
    flags.DEFINE_integer("seq_len", None, "Tokens per window; default: the run's data.seq_len, at most max_seq_len.")
    flags.DEFINE_integer("stride", None, "Tokens between the ends of a document's windows; default: seq_len.")
    flags.DEFINE_integer("batch_size", 8, "Windows per batch.")
    flags.DEFINE_integer("max_documents", None, "Score only the first N documents.")
    flags.DEFINE_string("dtype", None, "Compute dtype (default: the run's; float32 for Hugging Face directories).")


def _format(files: list[str]) -> str:
    suffix = pathlib.Path(files[0]).suffix
    return "tokens" if suffix in _TOKEN_SUFFIXES else "jsonl" if suffix == ".jsonl" else "text"


def _documents(
    files: list[str], model: Model, tokenizer: ByteTokenizer | HFTokenizer
) -> tuple[Iterator[Document], int | None]:
    """The documents of --data and how many there are (None when unknown before reading them)."""
    args = flags.FLAGS
    kind = args.format or _format(files)
    if kind == "tokens":
        stream = open_token_files(
            files, dtype=args.token_dtype, vocab_size=model.config.vocab_size, eos_id=tokenizer.eos_id, key="--data"
        )
        return token_file_documents(stream, tokenizer), None
    source = documents_lib.open_documents(documents_lib.DocumentSpec(kind, tuple(files), args.text_field))
    return text_documents((source[i] for i in range(len(source))), tokenizer), len(source)


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    if args.model is None or not args.data:
        raise app.UsageError("--model and --data are required: a workdir or HF directory, and files to score")
    try:
        result, seq_len = _evaluate(args)
    except ValueError as error:  # bad input, named by the message: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.4f}  bits/byte {result.bits_per_byte:.4f}"
        f"  ({result.documents} documents, {result.tokens} tokens, {result.bytes} bytes; windows of {seq_len} tokens,"
        f" stride {args.stride or seq_len})"
    )


def _evaluate(args: flags.FlagValues) -> tuple[PerplexityResult, int]:
    """The result of the command line's evaluation, and its window length."""
    files = paths.expand_all(args.data, "--data")
    model = load_model(args.model, dtype=args.dtype)
    tokenizer = model_tokenizer(model, args.model, args.tokenizer)
    documents, total = _documents(files, model, tokenizer)
    if args.max_documents is not None:
        documents = itertools.islice(documents, args.max_documents)
        total = args.max_documents if total is None else min(total, args.max_documents)
    seq_len = args.seq_len or min(model.run_config.data.seq_len, model.config.max_seq_len)
    with tqdm.tqdm(total=total, desc="perplexity", unit="doc", dynamic_ncols=True) as progress:
        result = evaluate_perplexity(
            model, documents, seq_len, args.batch_size, eos_id=tokenizer.eos_id, stride=args.stride, progress=progress
        )
    return result, seq_len


if __name__ == "__main__":
    define_flags()
    app.run(main)
