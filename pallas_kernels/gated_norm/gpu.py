"""The gated RMSNorm, y = w * RMSNorm(x) * SiLU(g) over the last axis, forward and backward as Pallas GPU kernels
(Triton lowering).

Rows of x, g: [N, D] (leading axes flattened). Each program takes ``Tiling.rows`` rows and walks D in power-of-two
parts (192 = 3 x 64). The forward reads x for the mean square and again (from cache) for the output, and writes y
and r = rsqrt(mean(x^2) + eps) (float32 [N], kept for the backward). With n = x r and dn = dy w SiLU(g),

    dx = r (dn - n mean(dn n)),    dg = dy w n SiLU'(g),    dw = sum over rows of dy n SiLU(g),

so the backward is one pass over x, g and dy (each read twice, the second time from cache) that writes dx and dg;
dw's sums are per program ([N / rows, D] float32, added up by XLA). XLA's autodiff of the plain form
(``reference.py``) reads x, g and dy in separate reduction and element-wise fusions and recomputes r. Timed on an
H200 at the 1B hybrid's value heads, B,T,H,D = 8,8192,16,192 (BENCHMARKS.md, 2026-12-03), forward and backward took
1.365 ms at 16 rows a program against XLA's 1.653.

The normalised x is rounded to x's dtype before w multiplies it, as in the plain form; all other arithmetic is
float32 and each output is rounded once.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """rows: rows per program (a power of two, taken down to one dividing N); warps: per program."""

    rows: int = 16  # the fastest of 16 to 128 at the 1B hybrid's shape on an H200 (BENCHMARKS.md, 2026-12-03)
    warps: int = 4


def supports(shape: tuple[int, ...]) -> bool:
    """Whether the kernels take x of this shape: N a multiple of 16; D a multiple of 16 and at most 1024 (its parts
    are unrolled)."""
    return shape[-1] % 16 == 0 and shape[-1] <= 1024 and math.prod(shape[:-1]) % 16 == 0


def _parts(width: int) -> list[pl.Slice]:
    """[0, width) in slices of the largest power of two <= 64 that divides width."""
    size = min(64, width & -width)
    return [pl.ds(start, size) for start in range(0, width, size)]


def _forward_kernel(x_ref, g_ref, w_ref, y_ref, r_ref, *, eps: float) -> None:
    """x, g, y: [R, D]; w: [D]; r: [R]."""
    width = x_ref.shape[1]
    square_sum = jnp.zeros((x_ref.shape[0],), _F32)
    for part in _parts(width):
        x = x_ref[:, part].astype(_F32)
        square_sum += jnp.sum(x * x, axis=1)
    r = jax.lax.rsqrt(square_sum / width + eps)
    r_ref[...] = r
    for part in _parts(width):
        n = (x_ref[:, part].astype(_F32) * r[:, None]).astype(x_ref.dtype).astype(_F32)
        g = g_ref[:, part].astype(_F32)
        y_ref[:, part] = (w_ref[part].astype(_F32)[None, :] * n * g * jax.nn.sigmoid(g)).astype(y_ref.dtype)


def _backward_kernel(x_ref, g_ref, w_ref, r_ref, dy_ref, dx_ref, dg_ref, dw_ref) -> None:
    """x, g, dy, dx, dg: [R, D]; w: [D]; r: [R]; dw: [D], this program's sum over its rows."""
    width = x_ref.shape[1]
    r = r_ref[...][:, None]

    def load(part: pl.Slice) -> tuple[jax.Array, ...]:
        x = x_ref[:, part].astype(_F32)
        g = g_ref[:, part].astype(_F32)
        dy = dy_ref[:, part].astype(_F32)
        sigmoid = jax.nn.sigmoid(g)
        return x * r, g, sigmoid, dy * w_ref[part].astype(_F32)[None, :]

    dot = jnp.zeros((x_ref.shape[0], 1), _F32)
    for part in _parts(width):
        n, g, sigmoid, dy_w = load(part)
        dot += jnp.sum(dy_w * g * sigmoid * n, axis=1, keepdims=True)
    mean = dot / width
    for part in _parts(width):
        n, g, sigmoid, dy_w = load(part)
        silu = g * sigmoid
        dx_ref[:, part] = (r * (dy_w * silu - n * mean)).astype(dx_ref.dtype)
        rounded = n.astype(x_ref.dtype).astype(_F32)
        dg_ref[:, part] = (dy_w * rounded * sigmoid * (1.0 + g * (1.0 - sigmoid))).astype(dg_ref.dtype)
        dw_ref[part] = jnp.sum(dy_ref[:, part].astype(_F32) * rounded * silu, axis=0)


def _rows(count: int, tiling: Tiling) -> int:
    size = tiling.rows
    while count % size:
        size //= 2
    return size


def _forward(
    x: jax.Array, g: jax.Array, w: jax.Array, eps: float, tiling: Tiling, interpret: bool
) -> tuple[jax.Array, jax.Array]:
    """x, g: [N, D]; w: [D] -> (y [N, D] in x's dtype, r float32 [N])."""
    count, width = x.shape
    rows = _rows(count, tiling)
    block = pl.BlockSpec((rows, width), lambda i: (i, 0))
    return pl.pallas_call(
        functools.partial(_forward_kernel, eps=eps),
        grid=(count // rows,),
        in_specs=[block, block, pl.BlockSpec((width,), lambda i: (0,))],
        out_specs=[block, pl.BlockSpec((rows,), lambda i: (i,))],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((count,), _F32)],
        compiler_params=plgpu.CompilerParams(num_warps=tiling.warps, num_stages=1),
        interpret=interpret,
        name="gated_norm_fwd",
    )(x, g, w)


def _backward(
    x: jax.Array, g: jax.Array, w: jax.Array, r: jax.Array, dy: jax.Array, tiling: Tiling, interpret: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """-> (dx, dg [N, D] in x's dtype, dw [D] float32)."""
    count, width = x.shape
    rows = _rows(count, tiling)
    block = pl.BlockSpec((rows, width), lambda i: (i, 0))
    dx, dg, dw = pl.pallas_call(
        _backward_kernel,
        grid=(count // rows,),
        in_specs=[block, block, pl.BlockSpec((width,), lambda i: (0,)), pl.BlockSpec((rows,), lambda i: (i,)), block],
        out_specs=[block, block, pl.BlockSpec((None, width), lambda i: (i, 0))],
        out_shape=[
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct((count // rows, width), _F32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=tiling.warps, num_stages=1),
        interpret=interpret,
        name="gated_norm_bwd",
    )(x, g, w, r, dy)
    return dx, dg, jnp.sum(dw, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _gated_rms_norm(x: jax.Array, g: jax.Array, w: jax.Array, eps: float, tiling: Tiling, interpret: bool) -> jax.Array:
    return _forward(x, g, w, eps, tiling, interpret)[0]


def _gated_rms_norm_fwd(x, g, w, eps, tiling, interpret):
    y, r = _forward(x, g, w, eps, tiling, interpret)
    return y, (x, g, w, r)


def _gated_rms_norm_bwd(eps, tiling, interpret, residuals, dy):
    del eps
    x, g, w, r = residuals
    dx, dg, dw = _backward(x, g, w, r, dy, tiling, interpret)
    return dx, dg, dw.astype(w.dtype)


_gated_rms_norm.defvjp(_gated_rms_norm_fwd, _gated_rms_norm_bwd)


def pallas_gpu_gated_rms_norm(
    x: jax.Array,
    gate: jax.Array,
    weight: jax.Array,
    eps: float,
    *,
    tiling: Tiling = Tiling(),
    interpret: bool = False,
) -> jax.Array:
    """``reference.xla_gated_rms_norm`` with the Pallas kernels: x, gate [..., D]; weight [D] -> [..., D] in x's
    dtype. interpret: run in the Pallas interpreter (any backend, e.g. CPU tests)."""
    width = x.shape[-1]
    y = _gated_rms_norm(x.reshape(-1, width), gate.reshape(-1, width), weight, float(eps), tiling, interpret)
    return y.reshape(x.shape)
