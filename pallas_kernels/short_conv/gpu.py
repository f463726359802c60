"""The short convolution with its backward as one Pallas GPU kernel (Triton lowering).

The forward, y = SiLU(p) with p[t] = sum over s < K of w[K - 1 - s] * x[t - s] * m_s[t] (m_s[t]: token t - s exists
and is in t's document), is XLA's fusion of shifted copies (``reference.py``), which XLA merges with the ops that
read y. The backward, with dp = dy * SiLU'(p),

    dx[t]           = sum over s < K of w[K - 1 - s] * dp[t + s] * m_s[t + s]
    dw[K - 1 - s]   = sum over b, t of x[t - s] * dp[t] * m_s[t],

is one kernel: each program walks a group of rows in blocks of ``_BLOCK_ROWS`` over a tile of channels. Per block
it loads x at the row offsets -(K - 1) .. K - 1 and dy at 0 .. K - 1 (rows clamped into the sequence and masked,
so every load is in bounds), recomputes p at the K offsets that dx reads, writes dx, and adds the block's share of
dw to float32 sums kept in registers. Each program writes its sums once ([B, row groups, K, C]); XLA adds them up.
So x and dy are read from memory once and dx written once, where XLA's autodiff of the shifted copies takes
several passes (the weight gradient alone as its own reductions).

All arithmetic is float32; dx is rounded to x's dtype, dw to the weight's. The kernel takes T a multiple of 16 and
C a multiple of 16 (``supports``); other shapes use XLA's backward.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.short_conv.reference import xla_short_conv

_BLOCK_ROWS = 16  # rows per step of a program's walk
_BLOCK_CHANNELS = 64  # channels per program, at most
_GROUP_ROWS = 512  # rows per program, at most: fewer, larger programs write fewer partial sums of dw
_NUM_WARPS = 4
_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class _Config:
    """taps: K. length: T. rows: rows per step. steps: steps per program. channels: channels per program."""

    taps: int
    length: int
    rows: int
    steps: int
    channels: int


def supports(x_shape: tuple[int, ...], taps: int) -> bool:
    """Whether the kernel takes x [B, T, C] with K taps: T and C multiples of 16, K at most 16 and below T."""
    _, length, channels = x_shape
    return length % 16 == 0 and channels % 16 == 0 and 0 < taps <= min(16, length)


def _largest_power_of_two_divisor(n: int, limit: int) -> int:
    size = limit
    while n % size:
        size //= 2
    return size


def _make_config(x_shape: tuple[int, ...], taps: int, rows: int, channels: int) -> _Config:
    _, length, width = x_shape
    rows = _largest_power_of_two_divisor(length, rows)
    group = _largest_power_of_two_divisor(length, max(_GROUP_ROWS, rows))
    return _Config(
        taps=taps,
        length=length,
        rows=rows,
        steps=group // rows,
        channels=_largest_power_of_two_divisor(width, channels),
    )


def _backward_kernel(x_ref, dy_ref, w_ref, *refs, cfg: _Config):
    """One (batch row, row group, channel tile): dx for the group's rows, and the group's partial sums of dw.

    x_ref, dy_ref: [T, Cb] (the whole sequence of the tile's channels); w_ref: [K, Cb]; segments_ref (when documents
    are masked): int [T]; dx_ref: [rows * steps, Cb]; dw_ref: float32 [K, Cb].
    """
    segments_ref, dx_ref, dw_ref = refs if len(refs) == 3 else (None, *refs)
    taps, rows, last = cfg.taps, cfg.rows, cfg.length - 1
    w = [w_ref[i, :].astype(_F32)[None, :] for i in range(taps)]
    group_start = pl.program_id(1) * cfg.steps * rows

    def step(i: jax.Array, dw: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        index = group_start + i * rows + jnp.arange(rows)
        rows_at = {o: index + o for o in range(-(taps - 1), taps)}
        valid = {o: (r >= 0) & (r <= last) for o, r in rows_at.items()}

        def load(ref, offset: int) -> jax.Array:
            """ref's rows at this block's rows + offset, 0 outside the sequence: [rows, Cb] float32."""
            tile = ref[jnp.clip(rows_at[offset], 0, last), :]
            return jnp.where(valid[offset][:, None], tile.astype(_F32), 0.0)

        if segments_ref is None:
            same = lambda a, b: None  # the loads' zeros already drop taps outside the sequence
        else:
            segment = {o: segments_ref[jnp.clip(r, 0, last)] for o, r in rows_at.items()}
            same = lambda a, b: (segment[a] == segment[b])[:, None]

        def masked(value: jax.Array, mask: jax.Array | None) -> jax.Array:
            return value if mask is None else jnp.where(mask, value, 0.0)

        x = {o: load(x_ref, o) for o in rows_at}
        dx = jnp.zeros((rows, dx_ref.shape[1]), _F32)
        for j in range(taps):  # p and dp at row offset j, whose taps are x at offsets j - s
            p = sum(w[taps - 1 - s] * masked(x[j - s], same(j - s, j)) for s in range(taps))
            sigmoid = jax.nn.sigmoid(p)
            dp = load(dy_ref, j) * sigmoid * (1.0 + p * (1.0 - sigmoid))
            dx = dx + w[taps - 1 - j] * masked(dp, same(0, j))
            if j == 0:
                dw = tuple(
                    dw[taps - 1 - s] + jnp.sum(masked(x[-s], same(-s, 0)) * dp, axis=0) for s in reversed(range(taps))
                )
        dx_ref[pl.ds(pl.multiple_of(i * rows, rows), rows), :] = dx.astype(dx_ref.dtype)
        return dw

    zeros = tuple(jnp.zeros((dw_ref.shape[1],), _F32) for _ in range(taps))
    dw = jax.lax.fori_loop(0, cfg.steps, step, zeros)
    for i in range(taps):
        dw_ref[i, :] = dw[i]


def short_conv_backward(
    x: jax.Array,
    weight: jax.Array,
    segment_ids: jax.Array | None,
    dy: jax.Array,
    *,
    interpret: bool = False,
    block_rows: int = _BLOCK_ROWS,
    block_channels: int = _BLOCK_CHANNELS,
) -> tuple[jax.Array, jax.Array]:
    """The gradients of ``xla_short_conv(x, weight, segment_ids)`` for the output cotangent dy.

    Args:
      x, dy: [B, T, C] (``supports`` holds); weight: [K, C]; segment_ids: int [B, T] or None.
      interpret: run in the Pallas interpreter (any backend, e.g. CPU tests).
      block_rows, block_channels: the rows of each step and the channels of each program, powers of two (taken down
        to ones that divide T and C).

    Returns:
      dx [B, T, C] in x's dtype, dw [K, C] in weight's dtype.
    """
    batch, length, width = x.shape
    taps = weight.shape[0]
    cfg = _make_config(x.shape, taps, block_rows, block_channels)
    groups = length // (cfg.rows * cfg.steps)
    sequence = pl.BlockSpec((None, length, cfg.channels), lambda b, g, c: (b, 0, c))
    in_specs = [sequence, sequence, pl.BlockSpec((taps, cfg.channels), lambda b, g, c: (0, c))]
    args = [x, dy, weight]
    if segment_ids is not None:
        in_specs.append(pl.BlockSpec((None, length), lambda b, g, c: (b, 0)))
        args.append(segment_ids.astype(jnp.int32))
    dx, dw_parts = pl.pallas_call(
        functools.partial(_backward_kernel, cfg=cfg),
        grid=(batch, groups, width // cfg.channels),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, cfg.rows * cfg.steps, cfg.channels), lambda b, g, c: (b, g, c)),
            pl.BlockSpec((None, None, taps, cfg.channels), lambda b, g, c: (b, g, 0, c)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct((batch, groups, taps, width), _F32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="short_conv_bwd",
    )(*args)
    return dx, jnp.sum(dw_parts, axis=(0, 1)).astype(weight.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _short_conv(x: jax.Array, weight: jax.Array, segment_ids: jax.Array | None, interpret: bool) -> jax.Array:
    return xla_short_conv(x, weight, segment_ids)


def _short_conv_fwd(x, weight, segment_ids, interpret):
    return xla_short_conv(x, weight, segment_ids), (x, weight, segment_ids)


def _short_conv_bwd(interpret, residuals, dy):
    x, weight, segment_ids = residuals
    dx, dw = short_conv_backward(x, weight, segment_ids, dy, interpret=interpret)
    return dx, dw, None


_short_conv.defvjp(_short_conv_fwd, _short_conv_bwd)


def pallas_gpu_short_conv(
    x: jax.Array, weight: jax.Array, segment_ids: jax.Array | None, *, interpret: bool = False
) -> jax.Array:
    """``xla_short_conv`` (same arguments, ``supports`` holding for x) whose gradient is ``short_conv_backward``."""
    return _short_conv(x, weight, segment_ids, interpret)
