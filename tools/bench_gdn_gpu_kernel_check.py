"""Checks the Pallas GPU gated delta rule kernel against the references, then times it on the doc's shapes.

Run on a CUDA machine from the repository root:

    python tools/bench_gdn_gpu_kernel_check.py                  # checks + timing table
    python tools/bench_gdn_gpu_kernel_check.py --block-v 32     # another value tile for the scans
    python tools/bench_gdn_gpu_kernel_check.py --skip-check --shapes 0 --runs 50

Checks (float32 and bfloat16 inputs, document resets, gates near 0, in [-20, 0] and -1e4, K and V not powers of
two): output, final state and all six gradients of the kernel against the naive time-step scan, with the
plain-jnp chunked reference's errors alongside. Timing: median milliseconds over --runs calls after warm-up,
bfloat16 q, k, v and float32 g, beta, for the kernel (bfloat16 matmuls; float32 matmuls with --with-fp32) and
the plain-jnp chunked reference, forward and forward + backward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pallas_kernels.gdn.gpu import pallas_gpu_gated_delta_rule  # noqa: E402
from pallas_kernels.gdn.ops import gated_delta_rule  # noqa: E402

SHAPES = ((1, 8192, 30, 96, 192), (4, 4096, 16, 128, 128), (2, 8192, 16, 128, 256))
CHECK_SHAPES = ((2, 300, 3, 96, 192), (1, 130, 1, 256, 256), (1, 77, 2, 24, 40))
CHUNK = 64
GRAD_NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _rel(a: jax.Array, b: jax.Array) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _inputs(shape: tuple[int, ...], seed: int, dtype, mixed_gates: bool) -> dict[str, jax.Array]:
    """Random q, k (L2-normalised), v in dtype; g, beta, initial_state float32; resets; document segment ids."""
    batch, length, heads, key_dim, value_dim = shape
    keys = jax.random.split(jax.random.key(seed), 8)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    if mixed_gates:
        u = jax.random.uniform(keys[3], (3, batch, length, heads))
        g = jnp.where(u[2] < 0.45, -1e-3 * u[0], jnp.where(u[2] < 0.97, -20.0 * u[1], -1e4))
    else:
        g = jax.nn.log_sigmoid(jax.random.normal(keys[3], (batch, length, heads)) + 3.0)
    starts = jax.random.uniform(keys[6], (batch, length)) < (0.02 if mixed_gates else 0.0)
    return dict(
        q=unit(jax.random.normal(keys[0], (batch, length, heads, key_dim))).astype(dtype),
        k=unit(jax.random.normal(keys[1], (batch, length, heads, key_dim))).astype(dtype),
        v=jax.random.normal(keys[2], (batch, length, heads, value_dim)).astype(dtype),
        g=g,
        beta=jax.random.uniform(keys[4], (batch, length, heads), minval=0.0, maxval=2.0 if mixed_gates else 1.0),
        initial_state=jax.random.normal(keys[5], (batch, heads, key_dim, value_dim)) * (1.0 if mixed_gates else 0.0),
        resets=starts.at[:, 0].set(False),
        segment_ids=jnp.cumsum(starts.astype(jnp.int32), axis=1),
    )


def _kernel(x: dict[str, jax.Array], matmul_dtype, options: dict) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the Pallas kernel; options: block_v."""
    scale = x["q"].shape[-1] ** -0.5

    def run(q, k, v, g, beta, initial_state):
        return pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], scale, CHUNK, matmul_dtype=matmul_dtype, **options
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


def check(indices: list[int], options: dict) -> bool:
    """Prints relative errors against the naive scan; returns whether all are within bounds."""
    ok = True
    print("check: relative error ||x - naive|| / ||naive|| (naive scan on float32 inputs, gradients by autodiff)")
    print(
        f"{'shape B,T,H,K,V':<22} {'inputs':<9} {'impl':<20} {'o':>9} {'final':>9}  "
        + "  ".join(f"{'d' + n[:5]:>8}" for n in GRAD_NAMES)
    )
    for seed in indices:
        shape = CHECK_SHAPES[seed]
        for dtype, bound in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
            x = _inputs(shape, seed, dtype, mixed_gates=True)
            x32 = {n: (a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a) for n, a in x.items()}
            outs_ref, grads_ref = _forward_and_grads(_reference(x32, "naive"), x32, seed)
            candidates = {"chunked (jnp)": (_reference(x, "chunked"), None)}
            candidates[f"pallas {jnp.dtype(dtype).name} matmul"] = (_kernel(x, dtype, options), bound)
            for name, (fn, limit) in candidates.items():
                label = f"{','.join(map(str, shape)):<22} {jnp.dtype(dtype).name:<9} {name:<20}"
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


def _median_ms(fn: Callable, args: tuple, runs: int) -> float:
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench(shapes: list[int], runs: int, options: dict, with_fp32: bool, with_reference: bool) -> None:
    """Prints median ms of forward and forward + backward for each shape."""
    print(f"\ntiming: median ms over {runs} runs (bf16 q, k, v; f32 g, beta), device {jax.devices()[0].device_kind}")
    print(f"{'shape B,T,H,K,V':<22} {'impl':<24} {'fwd':>9} {'fwd+bwd':>9}")
    for index in shapes:
        shape = SHAPES[index]
        x = _inputs(shape, 100 + index, jnp.bfloat16, mixed_gates=False)
        args = tuple(x[n] for n in GRAD_NAMES)
        impls = {"pallas (bf16 matmul)": _kernel(x, jnp.bfloat16, options)}
        if with_fp32:
            impls["pallas (f32 matmul)"] = _kernel(x, jnp.float32, options)
        if with_reference:
            impls["chunked jnp (XLA)"] = _reference(x, "chunked")
        for name, fn in impls.items():
            label = f"{','.join(map(str, shape)):<22} {name:<24}"
            try:
                forward = jax.jit(fn)
                o, final = forward(*args)
                cotangent = (jnp.ones_like(o), jnp.ones_like(final))
                backward = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a[:-1])[1](a[-1]))
                fwd_ms = _median_ms(forward, args, runs)
                bwd_ms = _median_ms(backward, (*args, cotangent), runs)
            except Exception as error:  # report and go on with the other implementations
                print(f"{label} FAILED: {str(error).splitlines()[0][:200]}", flush=True)
                continue
            print(f"{label} {fwd_ms:9.3f} {bwd_ms:9.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--shapes", default="0,1,2", help="indices into SHAPES to time, comma-separated")
    parser.add_argument("--check-shapes", default="0,1,2", help="indices into CHECK_SHAPES, comma-separated")
    parser.add_argument("--block-v", type=int, default=None, help="value columns per scan program: 16, 32, 64")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--with-fp32", action="store_true", help="also time the float32-matmul kernel")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the plain-jnp chunked form")
    args = parser.parse_args()
    indices = lambda text: [int(i) for i in text.split(",") if i]  # noqa: E731
    options = {"block_v": args.block_v}
    ok = True if args.skip_check else check(indices(args.check_shapes), options)
    if indices(args.shapes):
        bench(indices(args.shapes), args.runs, options, args.with_fp32, not args.skip_reference)
    if not ok:
        sys.exit("some checks FAILED")


if __name__ == "__main__":
    main()
