"""Measures the data pipeline's throughput on OLMo-style token files: tokens per second delivered in training batches.

    python tools/bench_data.py [--tokens 200000000] [--files 8] [--seq_len 4096] [--batch_size 16] [--steps 300]
                               [--write BENCHMARKS.md]

Writes random uint32 token files (ids below the dolma2 vocab, documents of random length ended by eos) to a
temporary directory, then reads training batches exactly as the trainer does: `load_data` (memory-mapped files,
seeded global shuffle, packing into `seq_len + 1` windows, segment ids, batching) and the trainer's prefetching grain
iterator. The files are fresh, so they sit in the page cache. `--write` puts the result in the data-pipeline section
of a BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for uninstalled checkouts

SECTION = "## Data pipeline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000_000, help="tokens in all the files together")
    parser.add_argument("--files", type=int, default=8, help="number of token files")
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300, help="batches timed (after 10 warm-up batches)")
    parser.add_argument("--write", default=None, help="a BENCHMARKS.md to put the result in")
    return parser.parse_args(argv)


def write_token_files(directory: pathlib.Path, num_tokens: int, num_files: int, vocab: int, eos: int) -> None:
    """Random uint32 token files whose documents (mean 1000 tokens) end with ``eos``."""
    rng = np.random.default_rng(0)
    for i in range(num_files):
        tokens = rng.integers(0, vocab, num_tokens // num_files, dtype=np.uint32)
        tokens[tokens == eos] = eos + 1
        tokens[rng.random(tokens.size) < 1e-3] = eos
        tokens.tofile(directory / f"part-{i:05d}.npy")


def measure(args: argparse.Namespace, directory: pathlib.Path) -> float:
    """Tokens per second of training batches read through the trainer's pipeline."""
    import experiments
    from hybridlm.data.pipeline import load_data
    from hybridlm.trainer import READ_OPTIONS

    config = experiments.get_config("olmo_hybrid_7b")
    config.data.update(
        source="token_files",
        paths=(str(directory / "*.npy"),),
        dtype="uint32",
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    data = load_data(config)
    iterator = iter(data.train.to_iter_dataset(READ_OPTIONS))
    for _ in range(10):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        batch = next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    assert batch["inputs"].shape == (args.batch_size, args.seq_len)
    return args.steps * args.batch_size * args.seq_len / elapsed


def update_benchmarks(path: pathlib.Path, command: str, tokens_per_sec: float, args: argparse.Namespace) -> None:
    """Replaces (or appends) the data-pipeline section of ``path``, leaving every other section as it is."""
    body = (
        f"{SECTION}\n\n"
        "Training batches read from OLMo-style token files by the full pipeline (`tools/bench_data.py`): memory-mapped "
        "uint32 files, seeded global shuffle, packing into `seq_len + 1` windows, segment ids, batching, and the "
        "trainer's prefetching grain iterator. The target is at least 1M tokens/s, so the pipeline never starves a "
        "GPU host.\n\n"
        "| date | machine | command | tokens/s |\n|---|---|---|---|\n"
        f"| {datetime.date.today()} | 2-core CPU dev box | `{command}` | {tokens_per_sec:,.0f} |\n\n"
        f"{args.tokens / 1e6:.0f}M tokens in {args.files} files, batches of {args.batch_size} x {args.seq_len} "
        "tokens; the files were just written, so they sit in the page cache.\n"
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from hybridlm.recipes import OLMO_VOCAB
    from hybridlm.data.tokenizer import ByteTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        write_token_files(directory, args.tokens, args.files, OLMO_VOCAB, ByteTokenizer.eos_id)
        tokens_per_sec = measure(args, directory)
    print(f"{tokens_per_sec:,.0f} tokens/s ({args.batch_size} x {args.seq_len} batches from {args.files} token files)")
    if args.write:
        options = [a for a, previous in zip(argv, [""] + argv) if "--write" not in (a.split("=")[0], previous)]
        command = " ".join(["python tools/bench_data.py", *options])
        update_benchmarks(pathlib.Path(args.write), command, tokens_per_sec, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
