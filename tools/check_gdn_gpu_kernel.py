"""Checks the Pallas GPU gated delta rule kernel against the naive recurrence on a GPU.

Run on a CUDA machine from the repository root:

    python tools/check_gdn_gpu_kernel.py                  # all check shapes
    python tools/check_gdn_gpu_kernel.py --shapes 0,1     # some of them
    python tools/check_gdn_gpu_kernel.py --block-v auto,64  # the default value tile of the scans and 64

Float32 and bfloat16 inputs, document resets, gates near 0, in [-20, 0] and -1e4, beta in [0, 2], K and V not
powers of two and up to 256: output, final state and all six gradients of the kernel against the naive time-step
scan (float32 inputs), with the plain-jnp chunked reference's errors alongside. Bounds: 1e-5 relative for float32,
2e-2 for bfloat16 (bfloat16 matmul operands). Timing is ``tools/bench_gdn.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pallas_kernels.gdn.gpu import pallas_gpu_gated_delta_rule  # noqa: E402
from pallas_kernels.gdn.ops import gated_delta_rule  # noqa: E402

CHECK_SHAPES = ((2, 300, 3, 96, 192), (1, 130, 1, 256, 256), (1, 77, 2, 24, 40))
CHUNK = 64
GRAD_NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _rel(a: jax.Array, b: jax.Array) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _inputs(shape: tuple[int, ...], seed: int, dtype) -> dict[str, jax.Array]:
    """Random q, k (L2-normalised), v in dtype; g, beta, initial_state float32; resets; document segment ids."""
    batch, length, heads, key_dim, value_dim = shape
    keys = jax.random.split(jax.random.key(seed), 8)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    u = jax.random.uniform(keys[3], (3, batch, length, heads))
    g = jnp.where(u[2] < 0.45, -1e-3 * u[0], jnp.where(u[2] < 0.97, -20.0 * u[1], -1e4))
    starts = jax.random.uniform(keys[6], (batch, length)) < 0.02
    return dict(
        q=unit(jax.random.normal(keys[0], (batch, length, heads, key_dim))).astype(dtype),
        k=unit(jax.random.normal(keys[1], (batch, length, heads, key_dim))).astype(dtype),
        v=jax.random.normal(keys[2], (batch, length, heads, value_dim)).astype(dtype),
        g=g,
        beta=jax.random.uniform(keys[4], (batch, length, heads), minval=0.0, maxval=2.0),
        initial_state=jax.random.normal(keys[5], (batch, heads, key_dim, value_dim)),
        resets=starts.at[:, 0].set(False),
        segment_ids=jnp.cumsum(starts.astype(jnp.int32), axis=1),
    )


def _kernel(x: dict[str, jax.Array], matmul_dtype, block_v: int | None) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the Pallas kernel (block_v None: its default)."""
    scale = x["q"].shape[-1] ** -0.5

    def run(q, k, v, g, beta, initial_state):
        return pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], scale, CHUNK, matmul_dtype=matmul_dtype, block_v=block_v
        )

    return run


def _reference(x: dict[str, jax.Array], impl: str) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through ``gated_delta_rule(impl=...)``."""

    def run(q, k, v, g, beta, initial_state):
        return gated_delta_rule(
            q, k, v, g, beta, initial_state=initial_state, segment_ids=x["segment_ids"], chunk_size=CHUNK, impl=impl
        )

    return run


def _forward_and_grads(fn: Callable, x: dict[str, jax.Array], seed: int) -> tuple[list[jax.Array], list[jax.Array]]:
    """[o, final] and the gradients of <o, probe> + <final, probe_state> with respect to GRAD_NAMES."""
    args = [x[n] for n in GRAD_NAMES]
    (o, final), vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(*args)
    keys = jax.random.split(jax.random.key(seed + 1000), 2)
    cotangent = (jax.random.normal(keys[0], o.shape).astype(o.dtype), jax.random.normal(keys[1], final.shape))
    return [o, final], list(jax.jit(vjp)(cotangent))


def check(indices: list[int], block_vs: list[int | None]) -> bool:
    """Prints relative errors against the naive scan; returns whether all are within bounds."""
    ok = True
    print("check: relative error ||x - naive|| / ||naive|| (naive scan on float32 inputs, gradients by autodiff)")
    print(
        f"{'shape B,T,H,K,V':<22} {'inputs':<9} {'impl':<30} {'o':>9} {'final':>9}  "
        + "  ".join(f"{'d' + n[:5]:>8}" for n in GRAD_NAMES)
    )
    for seed in indices:
        shape = CHECK_SHAPES[seed]
        for dtype, bound in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
            x = _inputs(shape, seed, dtype)
            x32 = {n: (a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a) for n, a in x.items()}
            outs_ref, grads_ref = _forward_and_grads(_reference(x32, "naive"), x32, seed)
            candidates = {"chunked (jnp)": (_reference(x, "chunked"), None)}
            for block_v in block_vs:
                name = f"pallas {jnp.dtype(dtype).name} matmul" + (f", BV {block_v}" if block_v else "")
                candidates[name] = (_kernel(x, dtype, block_v), bound)
            for name, (fn, limit) in candidates.items():
                label = f"{','.join(map(str, shape)):<22} {jnp.dtype(dtype).name:<9} {name:<30}"
                try:
                    outs, grads = _forward_and_grads(fn, x, seed)
                except Exception as error:  # report and go on with the other candidates
                    ok = False
                    print(f"{label} FAILED: {str(error).splitlines()[0][:200]}")
                    continue
                errors = [_rel(a, b) for a, b in zip(outs + grads, outs_ref + grads_ref)]
                finite = all(bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))) for a in outs + grads)
                passed = finite and (limit is None or max(errors) < limit)
                ok &= passed
                verdict = "" if limit is None else ("  PASS" if passed else f"  FAIL (bound {limit:g})")
                print(f"{label} " + " ".join(f"{e:9.2e}" for e in errors) + verdict, flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="0,1,2", help="indices into CHECK_SHAPES, comma-separated")
    parser.add_argument(
        "--block-v",
        default="auto",
        help="value columns per scan program, comma-separated: auto (the kernel's default), 16, 32, 64",
    )
    args = parser.parse_args()
    block_vs = [None if b == "auto" else int(b) for b in args.block_v.split(",")]
    if not check([int(i) for i in args.shapes.split(",")], block_vs):
        sys.exit("some checks FAILED")


if __name__ == "__main__":
    main()
