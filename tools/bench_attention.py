"""Checks and times the causal attention implementations (XLA, cuDNN, the Pallas GPU kernel) on a GPU.

Run on a CUDA machine from the repository root:

    python tools/bench_attention.py                          # check, then time at B=2, T=8192, 16 heads of 128
    python tools/bench_attention.py --shape 1,8192,32,8,128  # another shape: B,T,H,H_kv,D
    python tools/bench_attention.py --write BENCHMARKS.md    # append the table to BENCHMARKS.md

The check runs every implementation on every mask it supports at a small shape (odd T, GQA, bfloat16 and
float32) against XLA's masked attention on float32 copies of the inputs, forward and dq, dk, dv, and prints the
relative errors (bounds: 2e-2 for bfloat16, 1e-5 for float32). It runs XLA's float32 matmuls at full precision
(by default XLA takes one TF32 pass on the GPU, about 5e-4 off). The timing runs bfloat16 at the given shape for the
masks: causal, a 4096-token window, packed documents (random lengths, ~1000 tokens on average) and both; each
number is the median of ``--runs`` host-timed calls after a warm-up, all implementations timed in interleaved
rounds. An implementation that does not support a mask shows "-".
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

from op_bench import median_ms, relative_error  # noqa: E402
from pallas_kernels.attention import ops  # noqa: E402

MASKS = {"causal": (None, False), "window 4096": (4096, False), "documents": (None, True), "window+docs": (4096, True)}
CHECK_SHAPE = (2, 1000, 4, 2, 128)
CHECK_WINDOW = 300


def _inputs(shape: tuple[int, ...], documents: bool, mean_document: int, dtype, seed: int) -> tuple:
    """q [B, T, H, D], k, v [B, T, H_kv, D], a cotangent like q, and segment ids (None without documents)."""
    batch, length, heads, kv_heads, head_dim = shape
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(batch, length, h, head_dim)) for h in (heads, kv_heads, kv_heads, heads)]
    segment_ids = None
    if documents:
        segment_ids = jnp.asarray(np.cumsum(rng.uniform(size=(batch, length)) < 1 / mean_document, axis=1), jnp.int32)
    return (*(jnp.asarray(a, dtype) for a in arrays), segment_ids)


def _fwd_bwd(impl: str, segment_ids, window: int | None) -> Callable:
    """(q, k, v, d_out) -> (o, dq, dk, dv) through ``impl``, jitted."""

    def run(q, k, v, d_out):
        fn = lambda q, k, v: ops.BACKENDS[impl].run(q, k, v, segment_ids, window, q.shape[-1] ** -0.5)  # noqa: E731
        out, pullback = jax.vjp(fn, q, k, v)
        return (out, *pullback(d_out))

    return jax.jit(run)


def check(impls: list[str]) -> bool:
    """Prints every implementation's worst relative error per mask and dtype; True when all are within bounds."""
    ok = True
    print(f"check at B,T,H,H_kv,D = {CHECK_SHAPE}, window {CHECK_WINDOW}: worst of o, dq, dk, dv against float32 XLA")
    with jax.default_matmul_precision("highest"):
        for dtype, bound in ((jnp.bfloat16, 2e-2), (jnp.float32, 1e-5)):
            for documents in (False, True):
                for window in (None, CHECK_WINDOW):
                    ok &= _check_case(impls, dtype, bound, documents, window)
    return ok


def _check_case(impls: list[str], dtype, bound: float, documents: bool, window: int | None) -> bool:
    """One dtype and mask: prints each implementation's worst error; True when all are within `bound`."""
    ok = True
    q, k, v, d_out, segment_ids = _inputs(CHECK_SHAPE, documents, 100, dtype, seed=window or 1)
    upcast = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    reference = _fwd_bwd("xla", segment_ids, window)(*upcast)
    for impl in (i for i in impls if ops.BACKENDS[i].supports(dtype, CHECK_SHAPE[-1], documents)):
        outputs = _fwd_bwd(impl, segment_ids, window)(q, k, v, d_out)
        worst = max(relative_error(x, y) for x, y in zip(outputs, reference))
        ok &= worst <= bound
        label = f"{jnp.dtype(dtype).name} window={window} documents={documents}"
        print(f"  {impl:<11} {label:<42} {worst:.2e} {'PASS' if worst <= bound else 'FAIL'} (bound {bound:g})")
    return ok


def time_masks(shape: tuple[int, ...], impls: list[str], runs: int) -> list[str]:
    """Markdown rows: per mask, each implementation's fwd and fwd+bwd median ms (bfloat16)."""
    rows, scale = [], shape[-1] ** -0.5
    for mask, (window, documents) in MASKS.items():
        q, k, v, d_out, segment_ids = _inputs(shape, documents, 1000, jnp.bfloat16, seed=0)
        calls = {}
        for impl in (i for i in impls if ops.BACKENDS[i].supports(jnp.bfloat16, shape[-1], documents)):
            fn = functools.partial(ops.BACKENDS[impl].run, segment_ids=segment_ids, window=window, scale=scale)
            forward = jax.jit(fn)
            both = _fwd_bwd(impl, segment_ids, window)
            calls[impl, "fwd"] = lambda f=forward: f(q, k, v)
            calls[impl, "fwd+bwd"] = lambda f=both: f(q, k, v, d_out)
        times = median_ms(calls, runs)
        cells = [
            f"{times[impl, 'fwd']:.2f} / {times[impl, 'fwd+bwd']:.2f}" if (impl, "fwd") in times else "-"
            for impl in impls
        ]
        rows.append(f"| {mask} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2,8192,16,16,128", help="B,T,H,H_kv,D for the timing")
    parser.add_argument("--impls", default="xla,cudnn,pallas_gpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check")
    parser.add_argument("--write", default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    impls = args.impls.split(",")
    shape = tuple(int(x) for x in args.shape.split(","))
    ok = args.no_check or check(impls)
    header = ["| mask | " + " | ".join(f"{impl} fwd / fwd+bwd ms" for impl in impls) + " |"]
    header.append("|---" * (len(impls) + 1) + "|")
    table = header + time_masks(shape, impls, args.runs)
    device = jax.devices()[0].device_kind
    print(f"\n{device}, jax {jax.__version__}, bfloat16, B,T,H,H_kv,D = {shape}")
    print("\n".join(table))
    if args.write:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        with open(args.write, "a", encoding="utf-8") as f:
            f.write(f"\n### Attention, {datetime.date.today()}, {device}, jax {jax.__version__}, commit {commit}\n\n")
            f.write(f"`python tools/bench_attention.py --shape {args.shape} --impls {args.impls}`, bfloat16, ")
            f.write(f"median of {args.runs} host-timed calls.\n\n" + "\n".join(table) + "\n")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
