"""Checks and times the gated RMSNorm's implementations (XLA, the Pallas GPU kernels) on a GPU.

Run on a CUDA machine from the repository root:

    python tools/bench_norm.py                                   # check, then time the 1B hybrid's value heads
    python tools/bench_norm.py --shapes 1,8192,32,128 --tilings 64,32/8,128/4   # other B,T,H,D; kernel tilings

The check runs every implementation at B,T,H,D = 2,512,4,192 in bfloat16 and float32 against XLA's autodiff on
float32 copies: the output and dx, dgate, dweight, as relative errors (bounds: 1e-2 for bfloat16, 1e-5 for float32).
The timing runs bfloat16 at each shape: the forward, and the forward and backward together, of each implementation,
then the Pallas forward and backward at each tiling of ``--tilings`` (ROWS[/WARPS]); each number is the median of
``--runs`` host-timed calls after a warm-up, all calls of a shape timed in interleaved rounds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

from op_bench import command_line, median_ms, relative_error  # noqa: E402
from pallas_kernels.gated_norm import gpu, ops  # noqa: E402

CHECK_SHAPE = (2, 512, 4, 192)
EPS = 1e-5


def _inputs(shape: tuple[int, ...], dtype, seed: int) -> tuple[jax.Array, ...]:
    """x, gate, a cotangent [B, T, H, D] and the weight [D] (float32, around 1)."""
    rng = np.random.default_rng(seed)
    x, gate, cotangent = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))
    return x, gate, cotangent, jnp.asarray(1 + rng.normal(size=shape[-1:]) / 4, jnp.float32)


def _fwd_bwd(norm: Callable[..., jax.Array]) -> Callable:
    """(x, gate, cotangent, weight) -> (out, dx, dgate, dweight) through `norm(x, gate, weight)`, jitted."""

    def run(x, gate, cotangent, weight):
        out, pullback = jax.vjp(norm, x, gate, weight)
        return (out, *pullback(cotangent))

    return jax.jit(run)


def _implementation(impl: str) -> Callable[..., jax.Array]:
    return lambda x, gate, weight: ops.BACKENDS[impl].run(x, gate, weight, EPS)


def check(impls: list[str]) -> bool:
    """Prints each implementation's worst relative error per dtype; True when all are within bounds."""
    ok = True
    print(f"check at B,T,H,D = {CHECK_SHAPE}: worst of out, dx, dgate, dweight against float32 XLA")
    for dtype, bound in ((jnp.bfloat16, 1e-2), (jnp.float32, 1e-5)):
        x, gate, cotangent, weight = _inputs(CHECK_SHAPE, dtype, seed=0)
        upcast = [a.astype(jnp.float32) for a in (x, gate, cotangent)]
        reference = _fwd_bwd(_implementation("xla"))(*upcast, weight)
        for impl in impls:
            outputs = _fwd_bwd(_implementation(impl))(x, gate, cotangent, weight)
            worst = max(relative_error(a, b) for a, b in zip(outputs, reference))
            ok &= worst <= bound
            label = jnp.dtype(dtype).name
            print(f"  {impl:<11} {label:<9} {worst:.2e} {'PASS' if worst <= bound else 'FAIL'} (bound {bound:g})")
    return ok


def parse_tiling(spec: str) -> gpu.Tiling:
    """A tiling written ROWS[/WARPS], e.g. 64 or 32/8, as a gpu.Tiling."""
    rows, _, warps = spec.partition("/")
    return gpu.Tiling(int(rows), int(warps or 4))


def time_shape(shape: tuple[int, ...], impls: list[str], tilings: dict[str, gpu.Tiling], runs: int) -> list[str]:
    """Markdown rows for one shape: each implementation's fwd and fwd+bwd, then the kernels at each tiling."""
    x, gate, cotangent, weight = _inputs(shape, jnp.bfloat16, seed=0)
    norms = {impl: _implementation(impl) for impl in impls}
    for spec, tiling in tilings.items():
        norms[f"pallas {spec}"] = lambda x, g, w, t=tiling: gpu.pallas_gpu_gated_rms_norm(x, g, w, EPS, tiling=t)
    calls = {}
    for name, norm in norms.items():
        forward, both = jax.jit(norm), _fwd_bwd(norm)
        calls[f"{name} fwd"] = lambda f=forward: f(x, gate, weight)
        calls[f"{name} fwd+bwd"] = lambda f=both: f(x, gate, cotangent, weight)
    label = ",".join(map(str, shape))
    return [f"| {label} | {name} | {ms:.3f} |" for name, ms in median_ms(calls, runs).items()]


def main() -> None:
    command_line(
        __doc__,
        shape_axes="B,T,H,D",
        default_shapes="8,8192,16,192",
        tiling_syntax="ROWS[/WARPS]",
        default_tilings="",
        check=check,
        parse_tiling=parse_tiling,
        time_shape=time_shape,
        conditions="bfloat16",
    )


if __name__ == "__main__":
    main()
