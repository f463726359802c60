"""Checks and times the short convolution's implementations (XLA, the Pallas GPU backward) on a GPU.

Run on a CUDA machine from the repository root:

    python tools/bench_conv.py                  # check, then time the 1B hybrid's two widths (keys L2-normalised)
    python tools/bench_conv.py --shapes 1,8192,2880 --tilings 16x64,32x128/8  # other B,T,C[,D]; backward tilings

A shape B,T,C,D times the convolution L2-normalised over heads of D channels (the GDN's queries and keys). The check
runs every implementation at B,T,C = 2,1024,192 with K = 4, with and without packed documents, without the norm and
with it over heads of 96, in bfloat16 and float32, against XLA's autodiff on float32 copies: the output and dx, dw, as
relative errors (bounds: 2e-2 for bfloat16, 1e-5 for float32). The timing runs bfloat16 without documents at each
shape: the forward, and the forward and backward together, of each implementation (median of ``--runs`` host-timed
calls after a warm-up, in interleaved rounds), then the Pallas backward alone at each tiling of ``--tilings``
(``parse_tiling``) against XLA's backward (its forward recomputed inside, as the kernels recompute p).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

from op_bench import command_line, median_ms, relative_error  # noqa: E402
from pallas_kernels.short_conv import gpu, ops  # noqa: E402
from pallas_kernels.short_conv.reference import xla_short_conv  # noqa: E402

CHECK_SHAPE = (2, 1024, 192)
CHECK_HEAD_DIM = 96
TAPS = 4


def _inputs(shape: tuple[int, ...], documents: bool, dtype, seed: int) -> tuple:
    """x [B, T, C], weight [K, C], a cotangent like x, and segment ids (None without documents)."""
    batch, length, width = shape
    rng = np.random.default_rng(seed)
    x, cotangent = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(2))
    weight = jnp.asarray(rng.normal(size=(TAPS, width)) / 2, dtype)
    segment_ids = None
    if documents:
        segment_ids = jnp.asarray(np.cumsum(rng.uniform(size=(batch, length)) < 0.01, axis=1), jnp.int32)
    return x, weight, cotangent, segment_ids


def _fwd_bwd(impl: str, segment_ids, head_dim: int | None) -> Callable:
    """(x, weight, cotangent) -> (out, dx, dw) through ``impl``, jitted."""

    def run(x, weight, cotangent):
        out, pullback = jax.vjp(lambda x, w: ops.BACKENDS[impl].run(x, w, segment_ids, head_dim), x, weight)
        return (out, *pullback(cotangent))

    return jax.jit(run)


def check(impls: list[str]) -> bool:
    """Prints each implementation's worst relative error per dtype and mask; True when all are within bounds."""
    ok = True
    print(f"check at B,T,C = {CHECK_SHAPE}, K = {TAPS}: worst of out, dx, dw against float32 XLA")
    for dtype, bound in ((jnp.bfloat16, 2e-2), (jnp.float32, 1e-5)):
        for documents, head_dim in itertools.product((False, True), (None, CHECK_HEAD_DIM)):
            x, weight, cotangent, segment_ids = _inputs(CHECK_SHAPE, documents, dtype, seed=int(documents))
            upcast = (a.astype(jnp.float32) for a in (x, weight, cotangent))
            reference = _fwd_bwd("xla", segment_ids, head_dim)(*upcast)
            for impl in impls:
                outputs = _fwd_bwd(impl, segment_ids, head_dim)(x, weight, cotangent)
                worst = max(relative_error(a, b) for a, b in zip(outputs, reference))
                ok &= worst <= bound
                label = f"{jnp.dtype(dtype).name} documents={documents} heads={head_dim}"
                print(f"  {impl:<11} {label:<36} {worst:.2e} {'PASS' if worst <= bound else 'FAIL'} (bound {bound:g})")
    return ok


def parse_tiling(spec: str) -> gpu.Tiling:
    """A tiling written ROWSxCHANNELS[xGROUP][/WARPS], e.g. 16x64 or 32x128x1024/8, as a gpu.Tiling."""
    sizes, _, warps = spec.partition("/")
    rows, channels, *group = (int(n) for n in sizes.split("x"))
    return gpu.Tiling(rows, channels, *group, warps=int(warps or 4))


def time_shape(shape: tuple[int, ...], impls: list[str], tilings: dict[str, gpu.Tiling], runs: int) -> list[str]:
    """Markdown rows for one shape (B, T, C and optionally the L2 norm's D): each implementation's fwd and fwd+bwd,
    then each backward alone."""
    shape, head_dim = shape[:3], (shape[3:] or [None])[0]
    x, weight, cotangent, _ = _inputs(shape, False, jnp.bfloat16, seed=0)
    calls = {}
    for impl in impls:
        forward = jax.jit(lambda x, w, impl=impl: ops.BACKENDS[impl].run(x, w, None, head_dim))
        both = _fwd_bwd(impl, None, head_dim)
        calls[f"{impl} fwd"] = lambda f=forward: f(x, weight)
        calls[f"{impl} fwd+bwd"] = lambda f=both: f(x, weight, cotangent)
    xla_backward = jax.jit(lambda x, w, c: jax.vjp(lambda x, w: xla_short_conv(x, w, None, head_dim), x, w)[1](c))
    calls["xla bwd"] = lambda: xla_backward(x, weight, cotangent)
    for spec, tiling in tilings.items():
        kernel = jax.jit(lambda x, w, c, t=tiling: gpu.short_conv_backward(x, w, None, c, head_dim, tiling=t))
        calls[f"pallas bwd {spec}"] = lambda f=kernel: f(x, weight, cotangent)
    label = ",".join(map(str, shape + ((head_dim,) if head_dim else ())))
    return [f"| {label} | {name} | {ms:.3f} |" for name, ms in median_ms(calls, runs).items()]


def main() -> None:
    command_line(
        __doc__,
        shape_axes="B,T,C[,D]",
        default_shapes="8,8192,1536,96;8,8192,3072",
        tiling_syntax="ROWSxCHANNELS[xGROUP][/WARPS] (the backward's)",
        default_tilings="16x64",
        check=check,
        parse_tiling=parse_tiling,
        time_shape=time_shape,
        conditions=f"bfloat16, K = {TAPS}, no documents",
    )


if __name__ == "__main__":
    main()
