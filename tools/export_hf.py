"""Exports a training run to a Hugging Face directory that transformers' `AutoModelForCausalLM` loads.

    python tools/export_hf.py --workdir DIR [--step N] --out HF_DIR [--dtype bf16|fp32] [--max_shard_gb 5]

Writes config.json (olmo_hybrid for runs with GDN layers, olmo3 for attention-only ones), the weights as safetensors
in the released checkpoints' names and layout, generation_config.json, and the tokenizer files when the run used a
Hugging Face tokenizer. The weights are in the run's parameter dtype (config.model.param_dtype) unless --dtype names
another, and the tool prints which it wrote.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for uninstalled checkouts

_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the training run's workdir (config.json, checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    parser.add_argument("--out", required=True, help="new (or empty) directory for the Hugging Face files")
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default=None, help="weight dtype in the files (default: the run's)"
    )
    parser.add_argument("--max_shard_gb", type=float, default=5.0, help="largest safetensors file, in GB (1e9 bytes)")
    args = parser.parse_args(argv)
    if not args.max_shard_gb > 0:
        parser.error(f"--max_shard_gb={args.max_shard_gb} must be positive, e.g. 5")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imported late: argument errors come back before jax starts up.
    from hybridlm.checkpoint import read_run_config
    from hybridlm.hf.export import export_workdir, weight_dtype

    try:
        dtype = weight_dtype(read_run_config(pathlib.Path(args.workdir)), _DTYPES.get(args.dtype))
        out = export_workdir(
            args.workdir, args.out, step=args.step, dtype=dtype, max_shard_bytes=int(args.max_shard_gb * 1e9)
        )
    except ValueError as e:  # HFFormatError, ConfigError and unreadable workdirs: one line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = "--dtype" if args.dtype else "the run's config.model.param_dtype; --dtype bf16|fp32 to change it"
    print(f"exported {args.workdir} to {out}: {dtype} weights ({chosen})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
