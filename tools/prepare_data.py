"""Tokenizes text/JSONL files or a tensorflow-datasets split into OLMo-style token files for training.

    python tools/prepare_data.py --input DIR --out OUT_DIR [--tokenizer byte|TOKENIZER_JSON] [--workers N]
    python tools/prepare_data.py --tfds NAME [--split train] [--data_dir DIR] --out OUT_DIR [...]
    python tools/prepare_data.py --index TOKEN_DIR --dtype uint32 --tokenizer TOKENIZER_JSON
    python tools/prepare_data.py --corpus=python_code --out OUT_DIR [--vocab_size 8192] [--packages numpy,torch,...]

`--index` writes the metadata.json of token files made elsewhere (such as Olmo's), so training need not scan them.
`--corpus=python_code` prepares the scaling ladders' corpus from this machine's Python source, with a BPE tokenizer
it trains and saves beside the files, and prints its fingerprint (hybridlm.data.code_corpus).

In DIR, `*.jsonl` and `*.ndjson` files hold one JSON document per line (its `--text_field`); every other file is one
text document. OUT_DIR gets `part-00000.npy`, ... (headerless uint16 or uint32 token ids, eos after each document)
and `metadata.json`, which records the tokenizer (its absolute path, eos token and id, and vocab size): a run on the
files takes it from there. The tool (with --index too) ends by printing a train command for the files: the
tiny_hybrid experiment with the tokenizer's vocab size padded to a multiple of 128.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for uninstalled checkouts

VOCAB_MULTIPLE = 128  # the printed command's model vocab is the tokenizer's padded to this (dolma2: 100352)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a directory of text and JSONL files")
    source.add_argument("--tfds", help="a prepared tensorflow-datasets dataset name (read with tfds.data_source)")
    source.add_argument("--index", help="a directory of existing token files to write metadata.json for")
    source.add_argument("--corpus", choices=("python_code",), help="a corpus built here (hybridlm.data.code_corpus)")
    parser.add_argument("--vocab_size", type=int, default=8192, help="--corpus: the BPE tokenizer's vocab size")
    parser.add_argument(
        "--packages",
        default=None,
        help="--corpus: the installed packages whose source joins the standard library's, comma-separated "
        "(default: hybridlm.data.code_corpus.PACKAGES, the test extra's)",
    )
    parser.add_argument("--dtype", choices=("uint16", "uint32"), help="the --index files' token dtype")
    parser.add_argument("--split", default="train", help="the tfds split")
    parser.add_argument("--data_dir", default=None, help="where the tfds dataset lives (default: tfds' own)")
    parser.add_argument("--out", help="directory for the token files and metadata.json (not with --index)")
    parser.add_argument("--tokenizer", default="byte", help="'byte' or a Hugging Face tokenizer.json (or its dir)")
    parser.add_argument("--eos_token", default=None, help="end-of-document token (default: tokenizer_config.json's)")
    parser.add_argument("--text_field", default="text", help="the JSON key or tfds feature holding the text")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizing processes")
    parser.add_argument("--part_mb", type=float, default=256, help="text files are grouped into parts of this many MB")
    args = parser.parse_args(argv)
    if (args.index is None) == (args.out is None):
        parser.error("give --out with --input, --tfds or --corpus, and not with --index")
    if args.index is not None and args.dtype is None:
        parser.error("--index needs --dtype")
    if args.out is not None and os.path.isfile(args.out):
        parser.error(f"--out {args.out} is a file, not a directory; give a new directory")
    if args.workers < 1 or args.part_mb <= 0:
        parser.error(f"--workers={args.workers} and --part_mb={args.part_mb} must be positive")
    return args


def train_command(out: str, metadata: dict[str, Any]) -> str:
    """A command that trains the tiny_hybrid experiment on the token files in ``out``: the tokenizer comes from their
    ``metadata``, the model's vocab is its vocab size padded to ``VOCAB_MULTIPLE``."""
    vocab_size = -(-metadata["vocab_size"] // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    out = os.path.abspath(out)
    return shlex.join(
        [
            "python",
            "-m",
            "hybridlm.train",
            "--config=tiny_hybrid",
            f"--workdir=runs/{os.path.basename(out)}",
            "--config.data.source=token_files",
            f"--config.data.paths={os.path.join(out, '*.npy')}",
            f"--config.model.vocab_size={vocab_size}",
        ]
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from hybridlm.data import code_corpus, prepare
    from hybridlm.data.documents import DocumentSpec

    try:
        if args.index is not None:
            metadata = prepare.index(args.index, dtype=args.dtype, tokenizer=args.tokenizer, eos_token=args.eos_token)
            print(
                f"indexed {metadata['num_tokens']} tokens in {len(metadata['files'])} files of {args.index}\n"
                f"train on them with: {train_command(args.index, metadata)}"
            )
            return 0
        if args.corpus is not None:
            packages = code_corpus.PACKAGES if args.packages is None else args.packages.split(",")
            metadata = code_corpus.prepare_code_corpus(args.out, args.vocab_size, code_corpus.source_roots(packages))
            print(
                f"wrote {metadata['num_tokens']} tokens of {metadata['num_documents']} files to {args.out}, with "
                f"its tokenizer; fingerprint {json.dumps(metadata['fingerprint'], sort_keys=True)}\n"
                f"run the ladder on them with: python -m hybridlm.sweep --ladder=ladder --workdir=runs/ladder "
                f"--config.data.paths={os.path.join(os.path.abspath(args.out), '*.npy')}"
            )
            return 0
        if args.input is not None:
            parts = prepare.directory_parts(args.input, args.text_field, int(args.part_mb * 2**20))
            source = os.path.abspath(args.input)
        else:
            spec = DocumentSpec(
                "tfds",
                text_field=args.text_field,
                tfds_name=args.tfds,
                tfds_split=args.split,
                tfds_data_dir=args.data_dir,
            )
            parts = prepare.tfds_parts(spec, args.workers)
            source = spec.describe()
        metadata = prepare.prepare(
            parts, args.out, tokenizer=args.tokenizer, eos_token=args.eos_token, workers=args.workers, source=source
        )
    except ValueError as e:  # Missing or unreadable input, a bad tokenizer, a non-empty output: one line.
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {metadata['num_tokens']} {metadata['dtype']} tokens of {metadata['num_documents']} documents in "
        f"{len(metadata['files'])} files to {args.out}\ntrain on them with: {train_command(args.out, metadata)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
