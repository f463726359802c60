"""Causal flash attention as Pallas GPU kernels (Triton lowering), forward and backward, with a sliding window and
packed documents.

Query i sees the keys j with lower_i <= j <= i, where lower_i = max(start of i's document, i - window + 1): a
document is a run of equal segment ids (as packing makes them), and lower is non-decreasing along the row. The
kernels never form more than one [block_q, block_k] tile of scores:

1. ``flash_fwd``, grid (B, H, query blocks): the online softmax over the key blocks from lower_(first row) to the
   diagonal, writing O and the log-sum-exp (base 2) of every row.
2. ``flash_bwd_dkdv``, grid (B, H, key blocks): for one key block, the loop over the query blocks that can see it
   (up to upper_j, the end of the last query with lower <= j), accumulating dK and dV.
3. ``flash_bwd_dq``, grid (B, H, query blocks): the forward's loop again, accumulating dQ.

Work outside the visible band is skipped whole blocks at a time, so a sliding window or short documents cost only
the blocks they touch; the mask is applied to every visited tile. Scores are kept in base 2 (q.k times
scale * log2(e), then exp2). Softmax statistics and accumulators are float32; matmul operands are the input
dtype (bfloat16: one pass with float32 accumulation; float32: three TF32 passes on the GPU, full float32 in the
interpreter). The backward's row terms delta_i = sum(dO_i * O_i) come from XLA. Grouped-query attention: query
head n reads kv head n // (H / H_kv); dK and dV are formed per query head (in float32 when groups share a kv head)
and summed over each group.

The kernels read q, k, v and dO in the caller's [B, T, H, D] layout in place. Triton needs power-of-two tiles of
at least 16: head dims are zero-padded up to one (zero channels change no dot product) and T up to a multiple of
the blocks (padded keys sit after every real query; padded queries get a zero dO and so add nothing to dK, dV).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MAX_HEAD_DIM = 256
DTYPES = ("float32", "bfloat16", "float16")
_F32 = jnp.float32
_LOG2_E = math.log2(math.e)

# (block_q, block_k, warps, stages) per kernel, by pallas_call name, for rows of 128 bfloat16 values (see `_tiles`).
KERNEL_TILES = {
    "flash_fwd": (128, 64, 8, 3),
    "flash_bwd_dkdv": (64, 128, 8, 2),
    "flash_bwd_dq": (128, 64, 8, 2),
}


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static kernel configuration.

    heads, groups: query heads H and query heads per kv head. width: the head dim padded to a power of two >= 16.
    length: T padded to a multiple of every block. scale: the caller's scale times log2(e) (scores in base 2).
    natural_scale: the caller's scale. tiles: KERNEL_TILES entries clamped to the padded length.
    """

    heads: int
    groups: int
    width: int
    length: int
    scale: float
    natural_scale: float
    tiles: tuple[tuple[str, tuple[int, int, int, int]], ...]
    interpret: bool

    def tile(self, name: str) -> tuple[int, int, int, int]:
        return dict(self.tiles)[name]

    @property
    def precision(self) -> Any:
        return jax.lax.Precision.HIGHEST if self.interpret else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3


def _mm(a: jax.Array, b: jax.Array, cfg: _Config, *, transpose_a: bool = False, transpose_b: bool = False) -> jax.Array:
    """op(a) @ op(b) with float32 accumulation; float32 operands at float32 accuracy."""
    dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
    precision = cfg.precision if a.dtype == np.dtype(_F32) else None
    return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=_F32)


def _visible(queries: jax.Array, keys: jax.Array, lower: jax.Array) -> jax.Array:
    """bool [queries, keys] (broadcast shapes): lower_i <= j <= i."""
    return (keys <= queries) & (keys >= lower)


def _forward_kernel(q_ref, k_ref, v_ref, lower_ref, o_ref, lse_ref, *, cfg: _Config) -> None:
    """One (batch row, head, query block): O [BQ, D] and the base-2 log-sum-exp [BQ] of its rows."""
    block_q, block_k, _, _ = cfg.tile("flash_fwd")
    q_start = (pl.num_programs(2) - 1 - pl.program_id(2)) * block_q  # the longest rows first
    q = q_ref[pl.ds(q_start, block_q), :]
    lower = lower_ref[pl.ds(q_start, block_q)]
    queries = q_start + jnp.arange(block_q)

    def step(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        row_max, row_sum, acc = carry
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        scores = _mm(q, k_ref[keys, :], cfg, transpose_b=True) * cfg.scale
        seen = _visible(queries[:, None], j * block_k + jnp.arange(block_k)[None, :], lower[:, None])
        scores = jnp.where(seen, scores, -jnp.inf)
        new_max = jnp.maximum(row_max, jnp.max(scores, axis=1))
        shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # rows with nothing visible yet stay at zero
        probs = jnp.exp2(scores - shift[:, None])
        rescale = jnp.exp2(row_max - shift)
        acc = rescale[:, None] * acc + _mm(probs.astype(q.dtype), v_ref[keys, :], cfg)
        return new_max, rescale * row_sum + jnp.sum(probs, axis=1), acc

    initial = (jnp.full((block_q,), -jnp.inf, _F32), jnp.zeros((block_q,), _F32), jnp.zeros((block_q, cfg.width), _F32))
    first, last = lower_ref[q_start] // block_k, (q_start + block_q - 1) // block_k + 1
    row_max, row_sum, acc = jax.lax.fori_loop(first, last, step, initial)
    o_ref[pl.ds(q_start, block_q), :] = (acc / row_sum[:, None]).astype(o_ref.dtype)
    lse_ref[pl.ds(q_start, block_q)] = row_max + jnp.log2(row_sum)


def _probs(q, k, lse, queries, keys, lower, cfg: _Config) -> jax.Array:
    """Softmax weights [BQ, BK] of one tile from the saved log-sum-exp, zero where not visible."""
    scores = _mm(q, k, cfg, transpose_b=True) * cfg.scale
    seen = _visible(queries[:, None], keys[None, :], lower[:, None])
    return jnp.where(seen, jnp.exp2(scores - lse[:, None]), 0.0)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lower_ref, upper_ref, dk_ref, dv_ref, *, cfg):
    """One (batch row, query head, key block): that head's share of dK, dV [BK, D] over the queries that see the
    block (rows k_start .. upper of its last key)."""
    block_q, block_k, _, _ = cfg.tile("flash_bwd_dkdv")
    k_start = pl.program_id(2) * block_k
    key_rows = pl.ds(k_start, block_k)
    k, v = k_ref[key_rows, :], v_ref[key_rows, :]
    keys = k_start + jnp.arange(block_k)

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        queries = i * block_q + jnp.arange(block_q)
        probs = _probs(q, k, lse_ref[rows], queries, keys, lower_ref[rows], cfg)
        d_probs = _mm(do, v, cfg, transpose_b=True)
        d_scores = (probs * (d_probs - delta_ref[rows][:, None])).astype(q.dtype)
        dv = dv + _mm(probs.astype(do.dtype), do, cfg, transpose_a=True)
        return dk + _mm(d_scores, q, cfg, transpose_a=True), dv

    zeros = jnp.zeros((block_k, cfg.width), _F32)
    first, last = k_start // block_q, (upper_ref[k_start + block_k - 1] + block_q - 1) // block_q
    dk, dv = jax.lax.fori_loop(first, last, step, (zeros, zeros))
    dk_ref[key_rows, :] = (dk * cfg.natural_scale).astype(dk_ref.dtype)
    dv_ref[key_rows, :] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lower_ref, dq_ref, *, cfg: _Config) -> None:
    """One (batch row, head, query block): dQ [BQ, D] over the key blocks the forward visited."""
    block_q, block_k, _, _ = cfg.tile("flash_bwd_dq")
    q_start = (pl.num_programs(2) - 1 - pl.program_id(2)) * block_q
    rows = pl.ds(q_start, block_q)
    q, do, lse, delta, lower = q_ref[rows, :], do_ref[rows, :], lse_ref[rows], delta_ref[rows], lower_ref[rows]
    queries = q_start + jnp.arange(block_q)

    def step(j: jax.Array, dq: jax.Array) -> jax.Array:
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[keys, :]
        probs = _probs(q, k, lse, queries, j * block_k + jnp.arange(block_k), lower, cfg)
        d_probs = _mm(do, v_ref[keys, :], cfg, transpose_b=True)
        return dq + _mm((probs * (d_probs - delta[:, None])).astype(q.dtype), k, cfg)

    first, last = lower_ref[q_start] // block_k, (q_start + block_q - 1) // block_k + 1
    dq = jax.lax.fori_loop(first, last, step, jnp.zeros((block_q, cfg.width), _F32))
    dq_ref[rows, :] = (dq * cfg.natural_scale).astype(dq_ref.dtype)


# ----------------------------------------------------------------------------------------------------------
# pallas_call wrappers. Each program reads whole rows of one head ([T, D] of a [B, T, H, D] array, in place) and
# its batch row's bounds ([T] of [B, T]); per-row statistics are [B, H, T].
# ----------------------------------------------------------------------------------------------------------


def _head_spec(cfg: _Config, kv: bool = False) -> pl.BlockSpec:
    """All T rows of (query head h, or its kv head with ``kv``) of batch row b, for grids (B, H, blocks)."""
    groups = cfg.groups if kv else 1
    return pl.BlockSpec((None, cfg.length, None, cfg.width), lambda b, h, _: (b, 0, h // groups, 0))


def _row_spec(cfg: _Config) -> pl.BlockSpec:
    """The [T] bounds of batch row b, for grids (B, H, blocks)."""
    return pl.BlockSpec((None, cfg.length), lambda b, h, _: (b, 0))


def _stat_spec(cfg: _Config) -> pl.BlockSpec:
    """The [T] statistics of (b, h) in a [B, H, T] array."""
    return pl.BlockSpec((None, None, cfg.length), lambda b, h, _: (b, h, 0))


def _call(kernel, cfg: _Config, name: str, rows_per_program: int, args: list, in_specs: list, outs: list) -> Any:
    """pallas_call of ``kernel`` over grid (B, H, T / rows_per_program); outs: (spec, ShapeDtypeStruct) pairs."""
    _, _, warps, stages = cfg.tile(name)
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=(args[0].shape[0], cfg.heads, cfg.length // rows_per_program),
        in_specs=in_specs,
        out_specs=[spec for spec, _ in outs],
        out_shape=[shape for _, shape in outs],
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
        interpret=cfg.interpret,
        name=name,
    )(*args)


def _forward(q, k, v, lower, cfg: _Config) -> tuple[jax.Array, jax.Array]:
    """O [B, T, H, D] in q's dtype and the base-2 log-sum-exp [B, H, T] (float32)."""
    batch = q.shape[0]
    o, lse = _call(
        _forward_kernel,
        cfg,
        "flash_fwd",
        cfg.tile("flash_fwd")[0],
        [q, k, v, lower],
        [_head_spec(cfg), _head_spec(cfg, kv=True), _head_spec(cfg, kv=True), _row_spec(cfg)],
        [
            (_head_spec(cfg), jax.ShapeDtypeStruct(q.shape, q.dtype)),
            (_stat_spec(cfg), jax.ShapeDtypeStruct((batch, cfg.heads, cfg.length), _F32)),
        ],
    )
    return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, lower, upper, cfg: _Config) -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, T, H_kv, D]; lower, upper: int32 [B, T] -> O [B, T, H, D]."""
    del upper
    return _forward(q, k, v, lower, cfg)[0]


def _flash_fwd(q, k, v, lower, upper, cfg: _Config) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    o, lse = _forward(q, k, v, lower, cfg)
    return o, (q, k, v, lower, upper, o, lse)


def _flash_bwd(cfg: _Config, residuals: tuple[jax.Array, ...], do: jax.Array) -> tuple[jax.Array | None, ...]:
    q, k, v, lower, upper, o, lse = residuals
    do = do.astype(q.dtype)
    delta = jnp.einsum("bthd,bthd->bht", do.astype(_F32), o.astype(_F32))
    shared = cfg.groups > 1
    partial_dtype = _F32 if shared else k.dtype
    head, kv_head, rows, stats = _head_spec(cfg), _head_spec(cfg, kv=True), _row_spec(cfg), _stat_spec(cfg)
    dk, dv = _call(
        _dkdv_kernel,
        cfg,
        "flash_bwd_dkdv",
        cfg.tile("flash_bwd_dkdv")[1],
        [q, k, v, do, lse, delta, lower, upper],
        [head, kv_head, kv_head, head, stats, stats, rows, rows],
        [(head, jax.ShapeDtypeStruct(q.shape, partial_dtype))] * 2,
    )
    (dq,) = _call(
        _dq_kernel,
        cfg,
        "flash_bwd_dq",
        cfg.tile("flash_bwd_dq")[0],
        [q, k, v, do, lse, delta, lower],
        [head, kv_head, kv_head, head, stats, stats, rows],
        [(head, jax.ShapeDtypeStruct(q.shape, q.dtype))],
    )
    if shared:
        batch, length, _, width = k.shape
        dk, dv = (x.reshape(batch, length, -1, cfg.groups, width).sum(3).astype(k.dtype) for x in (dk, dv))
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def visible_bounds(segment_ids: jax.Array | None, batch: int, length: int, window: int | None) -> tuple[jax.Array, ...]:
    """lower, upper: int32 [B, length]. Query i sees keys lower_i <= j <= i; key j is seen by queries j <= i < upper_j.

    segment_ids: int [B, length] or None (one document); a document is a run of equal ids.
    """
    positions = jnp.arange(length, dtype=jnp.int32)
    if segment_ids is None:
        lower = jnp.zeros((batch, length), jnp.int32)
    else:
        starts = jnp.concatenate([jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        lower = jax.lax.cummax(jnp.where(starts, positions, 0), axis=1)
    if window is not None:
        lower = jnp.maximum(lower, positions - window + 1)
    upper = jax.vmap(lambda row: jnp.searchsorted(row, positions, side="right"))(lower)
    return lower, upper.astype(jnp.int32)


def _tiles(length: int, row_bytes: int) -> tuple[tuple[str, tuple[int, int, int, int]], ...]:
    """KERNEL_TILES (sized for rows of 128 bfloat16 values) for rows of `row_bytes` bytes and a sequence of `length`.

    Wider rows (float32, or head dims of 256) divide the blocks by the ratio and drop the prefetch stages, so the
    tiles stay within a Hopper SM's shared memory (float32 at 128 asked 320-384 KiB of 227 KiB unshrunk); no block is
    longer than the sequence rounded up to a power of two, nor shorter than Triton's 16.
    """
    shrink = max(1, row_bytes // 256)
    cap = max(16, pl.next_power_of_2(length))
    fit = lambda block: max(16, min(block // shrink, cap))  # noqa: E731
    return tuple(
        (name, (fit(block_q), fit(block_k), warps, stages if shrink == 1 else 1))
        for name, (block_q, block_k, warps, stages) in KERNEL_TILES.items()
    )


def pallas_gpu_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    window: int | None,
    scale: float,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Causal attention on the GPU (Pallas / Triton), differentiable (custom VJP, Pallas backward).

    Args:
      q: [B, T, H, D]; k, v: [B, T, H_kv, D], H a multiple of H_kv; float32, bfloat16 or float16, D <= 256.
      segment_ids: int [B, T] or None; tokens attend within their run of equal ids (packed documents).
      window: a query at i sees keys j with i - window < j <= i; None for all j <= i.
      scale: multiplier of q.k, a Python number (compiled into the kernels).
      interpret: run the kernels with the Pallas interpreter (CPU tests).

    Returns:
      O [B, T, H, D] in q's dtype.
    """
    if q.dtype.name not in DTYPES or q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"attention: impl='pallas_gpu' takes {DTYPES} inputs with head dims up to {MAX_HEAD_DIM}; got "
            f"{q.dtype.name} and head dim {q.shape[-1]}"
        )
    batch, length, heads, head_dim = q.shape
    width = max(16, pl.next_power_of_2(head_dim))
    tiles = _tiles(length, width * q.dtype.itemsize)
    block = max(max(bq, bk) for _, (bq, bk, _, _) in tiles)
    padded = -(-length // block) * block
    cfg = _Config(
        heads=heads,
        groups=heads // k.shape[2],
        width=width,
        length=padded,
        scale=float(scale) * _LOG2_E,
        natural_scale=float(scale),
        tiles=tiles,
        interpret=bool(interpret),
    )
    pads = ((0, 0), (0, padded - length), (0, 0), (0, width - head_dim))
    q, k, v = (jnp.pad(x, pads) if any(p for _, p in pads) else x for x in (q, k, v))
    if segment_ids is not None and padded > length:
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - length)), mode="edge")
    lower, upper = visible_bounds(segment_ids, batch, padded, window)
    return _flash(q, k, v, lower, upper, cfg)[:, :length, :, :head_dim]
