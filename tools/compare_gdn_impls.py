"""Trains one experiment a few steps with each GDN implementation and compares the per-step training losses.

Run from the repository root (on a GPU to compare the Pallas kernel with the reference ops):

    python tools/compare_gdn_impls.py --config tiny_hybrid --impls pallas_gpu,chunked --steps 20
    python tools/compare_gdn_impls.py --config tiny_hybrid --dtype bfloat16 --steps 20

Every run starts from the same seed, so the runs see the same initial parameters and batches; only the GDN
implementation (``config.model.gdn.impl``) differs. Prints the losses side by side and the largest relative
difference from the first implementation, and exits non-zero if it exceeds ``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import experiments  # noqa: E402
from hybridlm import checkpoint  # noqa: E402
from hybridlm.trainer import Trainer  # noqa: E402


def train_losses(name: str, impl: str, steps: int, dtype: str | None) -> list[float]:
    """Per-step training losses of ``steps`` steps of experiment ``name`` with GDN implementation ``impl``."""
    config = experiments.get_config(name)
    config.model.gdn.impl = impl
    if dtype:
        config.model.dtype = dtype
    config.train.num_steps = steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 2)
    config.train.log_every = 1
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    with tempfile.TemporaryDirectory() as workdir:
        Trainer(config, workdir).train()
        with open(checkpoint.metrics_file(pathlib.Path(workdir)), encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    return [r["loss"] for r in sorted(records, key=lambda r: r["step"]) if "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny_hybrid", help="an experiment name from `python -m experiments`")
    parser.add_argument("--impls", default="pallas_gpu,chunked", help="comma-separated GDN implementations")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default=None, help="override config.model.dtype (e.g. bfloat16)")
    parser.add_argument("--rtol", type=float, default=1e-3)
    args = parser.parse_args()
    impls = args.impls.split(",")
    losses = {impl: train_losses(args.config, impl, args.steps, args.dtype) for impl in impls}
    print("step " + " ".join(f"{impl:>14}" for impl in impls))
    for step, row in enumerate(zip(*losses.values()), start=1):
        print(f"{step:4d} " + " ".join(f"{x:14.6f}" for x in row))
    base = losses[impls[0]]
    worst = max(abs(a - b) / abs(b) for impl in impls[1:] for a, b in zip(losses[impl], base))
    print(f"largest relative difference from {impls[0]}: {worst:.2e} (bound {args.rtol:g})")
    if worst > args.rtol:
        sys.exit(1)


if __name__ == "__main__":
    main()
