"""The short convolution, optionally L2-normalised per head, as Pallas GPU kernels (Triton lowering): one pass
forward, two backward.

The forward, y = SiLU(p) with p[t] = sum over s < K of w[K - 1 - s] * x[t - s] * m_s[t] (m_s[t]: token t - s exists
and is in t's document), and with the norm z = y * r per head, r = (sum over the head of y^2 + eps)^-1/2, is one
pass. The backward, with dy = r * (dz - z * sum over the head of z * dz) under the norm and dp = dy * SiLU'(p),

    dx[t]           = sum over s < K of w[K - 1 - s] * dp[t + s] * m_s[t + s]
    dw[K - 1 - s]   = sum over b, t of x[t - s] * dp[t] * m_s[t],

takes two. Each program of any pass walks a group of rows over a tile of channels, a step of ``Tiling.rows`` rows at
a time, reading its inputs at row offsets (rows clamped into the sequence and masked, so every load is in bounds).
The forward and the first backward pass compute p from x at offsets -(K - 1) .. 0; the first backward pass writes dp
(in x's dtype) and adds x * dp to K float32 tiles kept in registers, which it sums over rows once at the end of its
walk ([B, row groups, K, C]; XLA adds those up). The second forms dx from dp at offsets 0 .. K - 1. Under the norm
the channel tile of the first two passes is one head, loaded in power-of-two parts (a head of 96 as three of 32).

Timed on an H200 at the 1B hybrid's key width, B,T,C = 8,8192,1536 (BENCHMARKS.md, 2026-12-03): with the norm over
heads of 96, the forward took 0.51 ms against XLA's 0.97 and the backward 0.91 against XLA autodiff's 1.37; without
it, the backward 0.76 against 0.88 and the forward 0.44 against 0.40, yet the 1B hybrid's step was 2.3 ms shorter
with the kernel for its value convolution too (remat "dots_and_kernels" keeps a kernel's output for the backward and
recomputes XLA's). One backward pass that recomputes p at the K offsets dx reads (K sigmoids per element) was 20%
slower than two.

All arithmetic is float32 (the SiLU's output is rounded to x's dtype before the norm, as ``xla_short_conv`` rounds
it); y, dp and dx are rounded to x's dtype, dw to the weight's. The kernels take T and C multiples of 16 and heads of
a multiple of 16 channels up to 256 (``supports``); other shapes use XLA.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.short_conv.reference import L2_EPS

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How the backward is cut up (both passes alike). rows: rows per step of a program's walk; channels: channels
    per program; group: rows per program (fewer, larger programs write fewer partial sums of dw); warps: per program.
    Sizes are powers of two, taken down to ones that divide T and C."""

    rows: int = 16
    channels: int = 64
    group: int = 512
    warps: int = 4


@dataclasses.dataclass(frozen=True)
class _Config:
    """taps: K. length: T. rows: rows per step. steps: steps per program. channels: channels per program, loaded
    ``part`` at a time. normalized: the channels are one head of the L2 norm."""

    taps: int
    length: int
    rows: int
    steps: int
    channels: int
    part: int
    normalized: bool

    @property
    def parts(self) -> list[pl.Slice]:
        """The channel slices of a tile that each load reads."""
        return [pl.ds(start, self.part) for start in range(0, self.channels, self.part)]


_MAX_HEAD_DIM = 256  # the first backward pass holds 2K float32 [rows, head] tiles (x, dw sums) in registers


def supports(x_shape: tuple[int, ...], taps: int, l2_head_dim: int | None = None) -> bool:
    """Whether the kernel takes x [B, T, C] with K taps and the L2 norm over heads of l2_head_dim channels (None: no
    norm): T and C multiples of 16, K at most 16 and below T, heads of a multiple of 16 channels up to 256."""
    _, length, channels = x_shape
    heads_fit = l2_head_dim is None or (
        l2_head_dim % 16 == 0 and l2_head_dim <= _MAX_HEAD_DIM and channels % l2_head_dim == 0
    )
    return length % 16 == 0 and channels % 16 == 0 and 0 < taps <= min(16, length) and heads_fit


def _largest_power_of_two_divisor(n: int, limit: int) -> int:
    size = limit
    while n % size:
        size //= 2
    return size


def _make_config(x_shape: tuple[int, ...], taps: int, tiling: Tiling, l2_head_dim: int | None) -> _Config:
    """The walk for ``tiling``; with l2_head_dim, each tile is one head in parts of its largest power-of-two divisor."""
    _, length, width = x_shape
    rows = _largest_power_of_two_divisor(length, tiling.rows)
    group = _largest_power_of_two_divisor(length, max(tiling.group, rows))
    if l2_head_dim is None:
        channels = _largest_power_of_two_divisor(width, tiling.channels)
        return _Config(taps, length, rows, group // rows, channels, channels, normalized=False)
    part = _largest_power_of_two_divisor(l2_head_dim, _MAX_HEAD_DIM)
    return _Config(taps, length, rows, group // rows, l2_head_dim, part, normalized=True)


class _Window:
    """One step of a program's walk: its rows of the sequence, read at row offsets (rows clamped into the sequence,
    so every load is in bounds, and masked)."""

    def __init__(self, cfg: _Config, start: jax.Array, offsets: range, segments_ref):
        self.last = cfg.length - 1
        self.rows = {o: start + o + jnp.arange(cfg.rows) for o in offsets}
        self.segments = None if segments_ref is None else {o: segments_ref[self.clamped(o)] for o in offsets}

    def clamped(self, offset: int) -> jax.Array:
        return jnp.clip(self.rows[offset], 0, self.last)

    def load(self, ref, offset: int, part: pl.Slice) -> jax.Array:
        """ref's rows at the step's rows + offset and the channels of ``part``, 0 outside the sequence: [rows, part]
        float32."""
        valid = (self.rows[offset] >= 0) & (self.rows[offset] <= self.last)
        return jnp.where(valid[:, None], ref[self.clamped(offset), part].astype(_F32), 0.0)

    def same_document(self, value: jax.Array, a: int, b: int) -> jax.Array:
        """value where the rows at offsets a and b are in one document, else 0 (unmasked without documents: the
        loads' zeros already drop taps outside the sequence)."""
        if self.segments is None:
            return value
        return jnp.where((self.segments[a] == self.segments[b])[:, None], value, 0.0)


def _walk(cfg: _Config, step, carry):
    """Runs step(i, first row, carry) over the program's steps i, returning the carry."""
    group_start = pl.program_id(1) * cfg.steps * cfg.rows
    return jax.lax.fori_loop(0, cfg.steps, lambda i, c: step(i, group_start + i * cfg.rows, c), carry)


def _tap_weights(w_ref, cfg: _Config) -> list[list[jax.Array]]:
    """w[i][j]: tap i's weights of part j of the tile, [1, part] float32."""
    return [[w_ref[i, part].astype(_F32)[None, :] for part in cfg.parts] for i in range(cfg.taps)]


def _preactivation(window: _Window, x: list[dict[int, jax.Array]], w: list[list[jax.Array]]) -> list[jax.Array]:
    """p of the step's rows per part: x[j][o] is part j of x at row offset o, -(K - 1) <= o <= 0."""
    taps = len(w)
    return [
        sum(w[taps - 1 - s][j] * window.same_document(x_j[-s], -s, 0) for s in range(taps)) for j, x_j in enumerate(x)
    ]


def _inverse_norm(y: list[jax.Array]) -> jax.Array:
    """r = (sum of y^2 over the head + eps)^-1/2 of a head's parts y [rows, part] float32: [rows, 1]."""
    return jax.lax.rsqrt(sum(jnp.sum(part * part, axis=1) for part in y) + L2_EPS)[:, None]


def _l2_norm_backward(y: list[jax.Array], dz: list[jax.Array]) -> list[jax.Array]:
    """The cotangent of y for z = y * r, from z's: y, dz are a head's parts, each [rows, part] float32."""
    r = _inverse_norm(y)
    z = [part * r for part in y]
    along_z = sum(jnp.sum(z_part * dz_part, axis=1) for z_part, dz_part in zip(z, dz))[:, None]
    return [r * (dz_part - z_part * along_z) for z_part, dz_part in zip(z, dz)]


def _forward_kernel(x_ref, w_ref, *refs, cfg: _Config):
    """The forward, for one (batch row, row group, channel tile): y = SiLU(p), times r when the tile is a normalized
    head. x_ref: [T, Cb]; w_ref: [K, Cb]; segments_ref (when documents are masked): int [T]; y_ref: [rows * steps,
    Cb]."""
    segments_ref, y_ref = refs if len(refs) == 2 else (None, *refs)
    taps, rows, parts = cfg.taps, cfg.rows, cfg.parts
    w = _tap_weights(w_ref, cfg)

    def step(i: jax.Array, start: jax.Array, carry: tuple) -> tuple:
        window = _Window(cfg, start, range(1 - taps, 1), segments_ref)
        x = [{o: window.load(x_ref, o, part) for o in window.rows} for part in parts]
        y = [p * jax.nn.sigmoid(p) for p in _preactivation(window, x, w)]
        if cfg.normalized:
            y = [part.astype(y_ref.dtype).astype(_F32) for part in y]
            r = _inverse_norm(y)
            y = [part * r for part in y]
        for part, y_part in zip(parts, y):
            y_ref[pl.ds(pl.multiple_of(i * rows, rows), rows), part] = y_part.astype(y_ref.dtype)
        return carry

    _walk(cfg, step, ())


def _gradient_kernel(x_ref, dy_ref, w_ref, *refs, cfg: _Config):
    """The first backward pass, for one (batch row, row group, channel tile): dp = dy * SiLU'(p) (dy through the L2
    norm's backward when the tile is a normalized head) and the group's partial sums of dw.

    x_ref, dy_ref: [T, Cb] (the whole sequence of the tile's channels); w_ref: [K, Cb]; segments_ref (when documents
    are masked): int [T]; dp_ref: [rows * steps, Cb]; dw_ref: float32 [K, Cb].
    """
    segments_ref, dp_ref, dw_ref = refs if len(refs) == 3 else (None, *refs)
    taps, rows, parts = cfg.taps, cfg.rows, cfg.parts
    w = _tap_weights(w_ref, cfg)

    def step(i: jax.Array, start: jax.Array, dw: tuple) -> tuple:
        window = _Window(cfg, start, range(1 - taps, 1), segments_ref)
        x = [{o: window.load(x_ref, o, part) for o in window.rows} for part in parts]
        p = _preactivation(window, x, w)
        sigmoid = [jax.nn.sigmoid(p_part) for p_part in p]
        dy = [window.load(dy_ref, 0, part) for part in parts]
        if cfg.normalized:
            dy = _l2_norm_backward([p_part * s_part for p_part, s_part in zip(p, sigmoid)], dy)
        dp = [dy_j * s_j * (1.0 + p_j * (1.0 - s_j)) for dy_j, s_j, p_j in zip(dy, sigmoid, p)]
        for part, dp_part in zip(parts, dp):
            dp_ref[pl.ds(pl.multiple_of(i * rows, rows), rows), part] = dp_part.astype(dp_ref.dtype)
        # dw[i] gathers x at offset i + 1 - K times dp, per row; the rows are summed once, after the walk.
        return tuple(
            tuple(
                dw_i[j] + window.same_document(x[j][i + 1 - taps], i + 1 - taps, 0) * dp[j] for j in range(len(parts))
            )
            for i, dw_i in enumerate(dw)
        )

    zeros = jnp.zeros((rows, cfg.part), _F32)
    dw = _walk(cfg, step, tuple(tuple(zeros for _ in parts) for _ in range(taps)))
    for i, sums in enumerate(dw):
        for part, part_sums in zip(parts, sums):
            dw_ref[i, part] = jnp.sum(part_sums, axis=0)


def _transpose_kernel(dp_ref, w_ref, *refs, cfg: _Config):
    """The second pass: dx = sum over s of w[K - 1 - s] * dp[t + s] within t's document. dp_ref: [T, Cb]; dx_ref:
    [rows * steps, Cb]."""
    segments_ref, dx_ref = refs if len(refs) == 2 else (None, *refs)
    taps, rows, (part,) = cfg.taps, cfg.rows, cfg.parts
    w = [tap for (tap,) in _tap_weights(w_ref, cfg)]

    def step(i: jax.Array, start: jax.Array, carry: tuple) -> tuple:
        window = _Window(cfg, start, range(taps), segments_ref)
        dx = sum(w[taps - 1 - j] * window.same_document(window.load(dp_ref, j, part), 0, j) for j in range(taps))
        dx_ref[pl.ds(pl.multiple_of(i * rows, rows), rows), :] = dx.astype(dx_ref.dtype)
        return carry

    _walk(cfg, step, ())


class _Specs:
    """The block specs of a pass over a grid of (batch row, row group, channel tile) cut as ``cfg`` says."""

    def __init__(self, cfg: _Config, x_shape: tuple[int, ...]):
        batch, length, width = x_shape
        group, channels = cfg.rows * cfg.steps, cfg.channels
        self.grid = (batch, length // group, width // channels)
        self.sequence = pl.BlockSpec((None, length, channels), lambda b, g, c: (b, 0, c))  # a tile's whole sequence
        self.weights = pl.BlockSpec((cfg.taps, channels), lambda b, g, c: (0, c))
        self.group_rows = pl.BlockSpec((None, group, channels), lambda b, g, c: (b, g, c))  # a program's rows
        self.partial_sums = pl.BlockSpec((None, None, cfg.taps, channels), lambda b, g, c: (b, g, 0, c))
        self.segments = pl.BlockSpec((None, length), lambda b, g, c: (b, 0))


def _pallas_call(kernel, cfg: _Config, tiling: Tiling, interpret: bool, **options):
    """pl.pallas_call of one pass's kernel with its config, warps and `options` (grid, specs, shapes, name)."""
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        compiler_params=plgpu.CompilerParams(num_warps=tiling.warps, num_stages=1),
        interpret=interpret,
        **options,
    )


def short_conv_forward(
    x: jax.Array,
    weight: jax.Array,
    segment_ids: jax.Array | None,
    l2_head_dim: int | None = None,
    *,
    interpret: bool = False,
    tiling: Tiling = Tiling(),
) -> jax.Array:
    """``xla_short_conv(x, weight, segment_ids, l2_head_dim)`` in one pass: x [B, T, C] (``supports`` holds), weight
    [K, C], segment_ids int [B, T] or None -> [B, T, C] in x's dtype. interpret, tiling: as ``short_conv_backward``."""
    cfg = _make_config(x.shape, weight.shape[0], tiling, l2_head_dim)
    specs = _Specs(cfg, x.shape)
    segments = [] if segment_ids is None else [segment_ids.astype(jnp.int32)]
    return _pallas_call(
        _forward_kernel,
        cfg,
        tiling,
        interpret,
        grid=specs.grid,
        in_specs=[specs.sequence, specs.weights, *[specs.segments] * len(segments)],
        out_specs=specs.group_rows,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        name="short_conv_fwd",
    )(x, weight, *segments)


def short_conv_backward(
    x: jax.Array,
    weight: jax.Array,
    segment_ids: jax.Array | None,
    dy: jax.Array,
    l2_head_dim: int | None = None,
    *,
    interpret: bool = False,
    tiling: Tiling = Tiling(),
) -> tuple[jax.Array, jax.Array]:
    """The gradients of ``xla_short_conv(x, weight, segment_ids, l2_head_dim)`` for the output cotangent dy.

    Args:
      x, dy: [B, T, C] (``supports`` holds); weight: [K, C]; segment_ids: int [B, T] or None; l2_head_dim: the
        channels per head of the L2 norm after the SiLU, or None for none.
      interpret: run in the Pallas interpreter (any backend, e.g. CPU tests).
      tiling: how the work is cut up (``Tiling``; with the norm, the first pass's channel tile is one head).

    Returns:
      dx [B, T, C] in x's dtype, dw [K, C] in weight's dtype.
    """
    taps = weight.shape[0]
    gradient_cfg = _make_config(x.shape, taps, tiling, l2_head_dim)
    transpose_cfg = _make_config(x.shape, taps, tiling, None)
    gradient, transpose = _Specs(gradient_cfg, x.shape), _Specs(transpose_cfg, x.shape)
    segments = [] if segment_ids is None else [segment_ids.astype(jnp.int32)]
    like_x = jax.ShapeDtypeStruct(x.shape, x.dtype)
    dw_parts = jax.ShapeDtypeStruct((*gradient.grid[:2], taps, x.shape[2]), _F32)
    dp, dw_parts = _pallas_call(
        _gradient_kernel,
        gradient_cfg,
        tiling,
        interpret,
        grid=gradient.grid,
        in_specs=[gradient.sequence, gradient.sequence, gradient.weights, *[gradient.segments] * len(segments)],
        out_specs=[gradient.group_rows, gradient.partial_sums],
        out_shape=[like_x, dw_parts],
        name="short_conv_bwd_gradient",
    )(x, dy, weight, *segments)
    dx = _pallas_call(
        _transpose_kernel,
        transpose_cfg,
        tiling,
        interpret,
        grid=transpose.grid,
        in_specs=[transpose.sequence, transpose.weights, *[transpose.segments] * len(segments)],
        out_specs=transpose.group_rows,
        out_shape=like_x,
        name="short_conv_bwd_transpose",
    )(dp, weight, *segments)
    return dx, jnp.sum(dw_parts, axis=(0, 1)).astype(weight.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _short_conv(
    x: jax.Array, weight: jax.Array, segment_ids: jax.Array | None, l2_head_dim: int | None, interpret: bool
) -> jax.Array:
    return short_conv_forward(x, weight, segment_ids, l2_head_dim, interpret=interpret)


def _short_conv_fwd(x, weight, segment_ids, l2_head_dim, interpret):
    return short_conv_forward(x, weight, segment_ids, l2_head_dim, interpret=interpret), (x, weight, segment_ids)


def _short_conv_bwd(l2_head_dim, interpret, residuals, dy):
    x, weight, segment_ids = residuals
    dx, dw = short_conv_backward(x, weight, segment_ids, dy, l2_head_dim, interpret=interpret)
    return dx, dw, None


_short_conv.defvjp(_short_conv_fwd, _short_conv_bwd)


def pallas_gpu_short_conv(
    x: jax.Array,
    weight: jax.Array,
    segment_ids: jax.Array | None,
    l2_head_dim: int | None = None,
    *,
    interpret: bool = False,
) -> jax.Array:
    """``xla_short_conv`` (same arguments, ``supports`` holding for the call) as ``short_conv_forward``, whose
    gradient is ``short_conv_backward``."""
    return _short_conv(x, weight, segment_ids, l2_head_dim, interpret)
