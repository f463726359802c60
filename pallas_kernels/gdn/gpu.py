"""Chunked gated delta rule as Pallas GPU kernels (Triton lowering), forward and backward.

A ``spec.GatedDeltaRule`` (``naive.py`` has the recurrence). Per batch b and head h the tokens are split into chunks
of C. Within a chunk, with i, j chunk positions, doc_i the number of document starts in the chunk at or before i,
L_ij = sum of g over (j, i],

    Gamma_ij = exp(L_ij)                     for j <= i and doc_i == doc_j, else 0
    D_i      = exp(sum of g over [0, i])     if doc_i == 0 (the carried state still applies), else 0
    E_j      = exp(sum of g over (j, C))     if doc_j == doc_{C-1} (token j reaches the chunk's end), else 0
    d        = exp(sum of g over the chunk)  if the chunk holds no document start, else 0
    A        = strictly_lower(diag(beta) (K K^T * Gamma)) ;  T = (I + A)^-1
    W        = T diag(beta * D) K ;  U = T diag(beta) V ;  P = (scale Q K^T) * Gamma
    Qt       = diag(D) (scale Q) - P W ;  PU = P U ;  Kt = diag(E) K

and across chunks, carrying the state S [K, V] in float32,

    v_new = U - W S ;  O = PU + Qt S ;  S <- d S + Kt^T v_new.

(O = PU + Qt S is the usual O = scale (Q * D) S + P v_new with v_new expanded, so every C x C matrix stays
in the chunk-parallel kernel and the sequential scan only does three [C, K] x [K, BV]-sized matmuls per
chunk.)

The kernels read q, k, v, g, beta and dO and write o, dq, dk, dv, dg and dbeta in the caller's [B, T, H, D] /
[B, T, H] layout in place (the block of head h of batch row b is a strided view), so no transposes run around
them; their intermediates are on the layout [B * H, T, channels]. "Chunk-parallel" kernels have grid
(B * H, chunks), the scans grid (B * H, V / BV) with the state [K, BV] in float32 registers and a sequential loop
over chunks.

Forward:
1. ``_solve_kernel``: T = (I + A)^-1 per chunk, from 16 x 16 blocks of A formed directly (diagonal blocks by
   forward substitution, the rest by block substitution with float32-operand matmuls). Saved for the backward.
2. ``_chunk_fwd_kernel``: gate sums, Gamma, then W, U, Qt, PU, Kt ([C, 64] tiles at most).
3. ``_scan_fwd_kernel``: O and the final state; under differentiation also the state entering every chunk and
   v_new = U - W S, for the backward.

Backward (a ``jax.custom_vjp``; the forward saves its inputs, T, W, Qt, Kt and the states and v_new, which it
writes anyway; under the model's rematerialisation they live only while the layer's backward runs):
4. ``_scan_bwd_kernel``, grid (B * H, V / BV), the reverse loop carrying dS: it writes dU = d(v_new) and the dS
   leaving every chunk, and does only the three matmuls on the sequential path.
5. ``_value_bwd_kernel``, ``_pairs_bwd_kernel``: the chunk algebra backwards through v_new = T Z, which carries
   every path from T, U and W to the outputs, to dv, d(P) and d(A), then through P, A and Gamma to the pair level.
6. ``_contract_finish_bwd_kernel``, grid (B * H, chunks, key blocks): the contractions over V with the saved states
   (dW, dQt, dKt, d(d)), kept in registers for the key loop that forms dq and dk.
7. ``_gates_bwd_kernel``: dg and dbeta from the row sums of the others. Separate kernels keep each one's C x C
   values in registers (one kernel for all of it spilled gigabytes to local memory on an H100).
``kernel_stages`` gives these steps (STAGE_KERNELS) compiled one by one, to time each kernel (``tools/bench_gdn.py``).

Numerics. Every log-decay is a direct sum of non-positive gates over a contiguous range (a cumulative sum
along axis 0 of a masked C x C matrix for the pairs, masked row sums for E, block head/tail sums in the solve
kernel), never a difference of cumulative sums, so a chunk holding a gate of -1e4 loses no precision in the pairs
after it. Exponents are masked to -inf before ``exp``, so no positive exponent is formed. The state, all gate
sums, K K^T and the inverse T are computed in float32 and every matmul accumulates in float32. ``matmul_dtype``
sets the operand dtype of the matmuls and the storage dtype of T, W, U, Qt, PU, Kt, v_new and the saved states
(T meets the matmuls only as an operand, so storing it in that dtype loses nothing):
float32 (every matmul at float32 accuracy: on the GPU three TF32 tensor-core passes, ``TF32_TF32_F32_X3``,
relative error ~1e-6; in the interpreter ``Precision.HIGHEST``) or bfloat16 (one bfloat16 pass; errors of a few
1e-3 against the float32 recurrence, like flash-linear-attention's bfloat16 kernels). It is also the storage dtype
of the backward's per-token cotangent dU and of every C x C array passed between the backward's kernels (d(P),
d(A), d(Q K^T), d(K K^T), P T). The block substitution of the inverse uses float32 operands:
float32-accurate with float32 matmuls, one TF32 pass with bfloat16 ones.

Triton needs power-of-two tiles >= 16. The chunk kernels step through the key width in power-of-two column blocks
(K = 96 in three blocks of 32) and the value width in power-of-two tiles of at most 64 (192 in three of 64); the
scans hold the state as one tile per power-of-two part of the key width (96 = 64 + 32) and BV value columns, so no
array is padded to a power of two. Inputs are copied with zero padding only where needed: K or V not a multiple of
16 (zero key channels change nothing), or T not a multiple of C (padded tokens have q = k = v = g = beta = 0, which
leaves the state unchanged); outputs are sliced back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.gdn.spec import Backend

# The calls the kernels take (``BACKEND``): K, V up to MAX_HEAD_DIM, these chunk sizes, float32 or bfloat16 inputs.
MAX_HEAD_DIM = 256
CHUNK_SIZES = (16, 32, 64)
DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16))
_BLOCK_V = (16, 32, 64)
_MATMUL_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16))
_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static kernel configuration.

    chunk: C. heads: H (the kernels read and write the caller's [B, T, H, D] arrays in place).
    key_width: K rounded up to a multiple of 16, the width of q, k, W, Qt, Kt, dq, dk and the key rows of the state.
    block_v: BV, the value columns per scan program. num_v_blocks: value width / BV.
    matmul_dtype: operand dtype of the fast matmuls and storage dtype of T, W, U, Qt, PU, Kt and saved states.
    interpret: run the kernels with the Pallas interpreter (any backend, e.g. CPU tests).
    scale: the multiplier of q, applied inside the kernels (float32) rather than to a scaled copy of q.
    """

    chunk: int
    heads: int
    key_width: int
    block_v: int
    num_v_blocks: int
    matmul_dtype: np.dtype
    interpret: bool
    scale: float

    @property
    def value_dim(self) -> int:
        return self.block_v * self.num_v_blocks

    @property
    def precision(self) -> Any:
        """For float32 matmuls, float32 accuracy: three TF32 tensor-core passes on the GPU (IEEE float32 dots lower
        to CUDA-core FMA loops that take minutes to compile and run far slower), plain float32 in the interpreter.
        For bfloat16 operands, the default (one bfloat16 pass, float32 accumulation)."""
        if self.matmul_dtype != np.dtype(_F32):
            return None
        return _HIGHEST if self.interpret else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3

    @property
    def value_tile(self) -> int:
        """The widest power of two <= 64 that divides the value width: the column step of the chunk kernels' value
        loops (independent of BV, which sets only the scans' parallelism)."""
        return min(64, self.value_dim & -self.value_dim)

    @property
    def key_block(self) -> int:
        """The widest power of two <= 64 that divides key_width: the column step of the chunk kernels' key loops."""
        return min(64, self.key_width & -self.key_width)


# Warps per kernel, by pallas_call name: the fastest of 1, 2, 4 and 8 on an H100 at the Olmo Hybrid shape
# (``tools/bench_gdn.py --sweep-warps``, BENCHMARKS.md): 1 for the solve, whose 16 x 16 blocks fit one warp, 4 for
# the rest (the backward's value, pairs, contract-finish and gates kernels are newer than that sweep; the pairs
# kernel's earlier form lost at 8 warps). ``--warps NAME=W`` overrides entries before anything is traced.
KERNEL_WARPS = dict.fromkeys(
    (
        "gdn_solve",
        "gdn_chunk_fwd",
        "gdn_scan_fwd",
        "gdn_scan_bwd",
        "gdn_value_bwd",
        "gdn_pairs_bwd",
        "gdn_contract_finish_bwd",
        "gdn_gates_bwd",
    ),
    4,
) | {"gdn_solve": 1}


def _sm_count() -> int:
    """Streaming multiprocessors of the default device (132, an H100's, where it does not say, as on the CPU)."""
    return getattr(jax.devices()[0], "core_count", None) or 132


def _scan_stages(step_bytes: int, programs: int, cfg: _Config) -> int:
    """Scans prefetch the tiles of the next two chunks (3 stages), or of the next one (2), while those buffers and
    the layout conversions of the state [K, BV] and of v_new or dU [C, BV] into matmul operands fit in a program's
    share of an H100's shared memory: 227 KiB where the ``programs`` fit one per SM, else 113 KiB, so that two share
    an SM rather than the rest waiting for a second wave. Where even 2 stages do not fit in 113 KiB, they take a
    whole SM each rather than run without prefetching (K = V = 256 at BV = 64 fits neither and takes one stage).
    Measured (BENCHMARKS.md): at the Olmo Hybrid 7B shape (180 programs) 3 stages, one program per SM, took 680 us
    against 528 us for 2 stages, two per SM; at the 1B hybrid's batch of 8 (384 programs) the forward scan with 2
    stages, one per SM, took 0.66 ms less than with one stage, two per SM."""
    conversions = (cfg.key_width + cfg.chunk) * cfg.block_v * cfg.matmul_dtype.itemsize

    def fitting(budget: int) -> list[int]:
        return [stages for stages in (2, 3) if stages * step_bytes + conversions <= budget]

    shared = fitting(227 * 1024 if programs <= _sm_count() else 113 * 1024) or fitting(227 * 1024)[:1]
    return max([1] + shared)


# ----------------------------------------------------------------------------------------------------------
# In-kernel helpers (traced inside the kernels; every value's dims are powers of two).
# ----------------------------------------------------------------------------------------------------------


def _positions(size: int) -> tuple[jax.Array, jax.Array]:
    """Row and column indices [size, size] (int32)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (size, size), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (size, size), 1)
    return rows, cols


def _mm(a: jax.Array, b: jax.Array, cfg: _Config, *, transpose_a: bool = False, transpose_b: bool = False) -> jax.Array:
    """op(a) @ op(b): operands in ``cfg.matmul_dtype``, float32 accumulation."""
    dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
    dtype = cfg.matmul_dtype
    return jax.lax.dot_general(
        a.astype(dtype), b.astype(dtype), dims, precision=cfg.precision, preferred_element_type=_F32
    )


def _mm_solve(a: jax.Array, b: jax.Array, cfg: _Config) -> jax.Array:
    """a @ b for the block substitution of the inverse, float32 operands: float32-accurate (three TF32 passes on
    the GPU) with float32 matmuls; one TF32 pass (10-bit mantissa, finer than the bfloat16 operands the inverse
    then meets in W and U) with bfloat16 matmuls."""
    if cfg.interpret:
        precision = _HIGHEST
    elif cfg.matmul_dtype == np.dtype(_F32):
        precision = jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    else:
        precision = jax.lax.DotAlgorithmPreset.TF32_TF32_F32
    return jnp.dot(a.astype(_F32), b.astype(_F32), precision=precision, preferred_element_type=_F32)


def _chunk_decay(g: jax.Array, doc: jax.Array) -> jax.Array:
    """d (scalar): the decay of the carried state over the chunk, 0 if a document starts in it.

    g: [C] log gates; doc: int32 [C] document index within the chunk (0 = the carried state's document).
    """
    return jnp.exp(jnp.where(jnp.max(doc) == 0, jnp.sum(g), -jnp.inf))


def _chunk_gates(g: jax.Array, doc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked decay factors of one chunk.

    Args:
      g: [C] log gates (<= 0); doc: int32 [C] document index within the chunk.

    Returns:
      gamma [C, C]: exp(sum of g over (j, i]) for j <= i in the same document, else 0.
      decay_in [C]: exp(sum of g over [0, i]) for tokens of document 0, else 0.
      decay_out [C]: exp(sum of g over (j, C)) for tokens of the chunk's last document, else 0.
    """
    rows, cols = _positions(g.shape[0])
    same_doc = doc[:, None] == doc[None, :]
    pair_log = jnp.cumsum(jnp.where(cols < rows, g[:, None], 0.0), axis=0)
    gamma = jnp.exp(jnp.where((cols <= rows) & same_doc, pair_log, -jnp.inf))
    decay_in = jnp.exp(jnp.where(doc == 0, jnp.cumsum(g), -jnp.inf))
    tail_log = jnp.sum(jnp.where(cols > rows, g[None, :], 0.0), axis=1)
    decay_out = jnp.exp(jnp.where(doc == jnp.max(doc), tail_log, -jnp.inf))
    return gamma, decay_in, decay_out


def _unit_lower_inverses(blocks: list[jax.Array]) -> list[jax.Array]:
    """(I + A)^-1 [S, S] for each strictly lower-triangular A [S, S] in ``blocks``, by forward substitution: one
    loop of S - 1 steps updates every block, so the blocks' independent steps overlap.

    Row i of an inverse is e_i - sum_{j < i} A_ij (row j); rows j >= i are still e_j when row i is formed, and
    A_ij = 0 there. Rows of A are read from A^T so the broadcast needs no layout change.
    """
    size = blocks[0].shape[0]
    rows, cols = _positions(size)
    transposed = [a.T for a in blocks]

    def substitute(i: jax.Array, inverses: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        updated = []
        for a_t, inverse in zip(transposed, inverses):
            a_row = jnp.sum(jnp.where(cols == i, a_t, 0.0), axis=1)
            update = jnp.sum(a_row[:, None] * inverse, axis=0)
            updated.append(jnp.where(rows == i, inverse - update[None, :], inverse))
        return tuple(updated)

    identity = (rows == cols).astype(_F32)
    return list(jax.lax.fori_loop(1, size, substitute, (identity,) * len(blocks)))


def _gate_grad(pair_sums: jax.Array, d_in: jax.Array, d_out: jax.Array, d_all: jax.Array) -> jax.Array:
    """dg [C] from the cotangents of the chunk's gate sums.

    Args:
      pair_sums: [C], row sums less column sums of d_pair [C, C], the cotangent of L_ij = sum of g over (j, i]
        (zero for j >= i).
      d_in, d_out: [C], the cotangents of the sums over [0, i] and over (j, C).
      d_all: scalar, the cotangent of the sum over the whole chunk.

    g_m is in L_ij when j < m <= i, so its pair part is sum_{i >= m} (row sum i - column sum i) of d_pair (the
    pairs with i >= m less those with j >= m); it is in [0, i] when m <= i and in (j, C) when j < m.
    """
    rows, cols = _positions(pair_sums.shape[0])
    return jnp.sum(jnp.where(rows >= cols, (pair_sums + d_in)[:, None], d_out[:, None]), axis=0) + d_all


# ----------------------------------------------------------------------------------------------------------
# Kernels.
# ----------------------------------------------------------------------------------------------------------


def _key_blocks(cfg: _Config, width: int = 64) -> list[pl.Slice]:
    """Column slices of the key width, min(key_block, width) wide: chunk kernels hold [C, width] tiles at most."""
    width = min(cfg.key_block, width)
    return [pl.ds(b, width) for b in range(0, cfg.key_width, width)]


def _value_tiles(cfg: _Config) -> list[pl.Slice]:
    """Column slices of the (padded) value dim, ``cfg.value_tile`` wide."""
    return [pl.ds(j, cfg.value_tile) for j in range(0, cfg.value_dim, cfg.value_tile)]


def _key_product(x_ref, k_ref, cfg: _Config) -> jax.Array:
    """X K^T [C, C] of one chunk (X = Q or K), summed over key blocks."""
    out = jnp.zeros((cfg.chunk, cfg.chunk), _F32)
    for keys in _key_blocks(cfg):
        out += _mm(x_ref[:, keys], k_ref[:, keys], cfg, transpose_b=True)
    return out


_SUB = 16  # rows per diagonal block of the inverse


def _solve_kernel(k_ref, g_ref, beta_ref, doc_ref, inverse_ref, *, cfg: _Config) -> None:
    """One chunk: k [C, K], g, beta, doc [C] -> T = (I + A)^-1 [C, C], computed in float32, stored in the matmul
    dtype.

    A = strictly_lower(diag(beta) (K K^T * Gamma)) is formed directly in 16 x 16 blocks (i >= j): the log-decay
    of the pair (r, c) in blocks (i, j), i > j, is (g summed over block i up to r) + (whole blocks between) +
    (g summed over block j after c), each a direct sum of non-positive gates. The diagonal blocks are inverted
    by forward substitution (one loop of 15 steps for all of them), the rest by the block recurrence
    T_ij = -T_ii sum_{j <= m < i} A_im T_mj with float32-operand matmuls (``_mm_solve``).
    """
    blocks = cfg.chunk // _SUB
    rows, cols = _positions(_SUB)
    spans = [pl.ds(b * _SUB, _SUB) for b in range(blocks)]
    g = [g_ref[span] for span in spans]
    beta = [beta_ref[span] for span in spans]
    doc = [doc_ref[span] for span in spans]
    head = [jnp.cumsum(x) for x in g]  # [16]: g summed over [block start, r]
    tail = [jnp.sum(jnp.where(cols > rows, x[None, :], 0.0), axis=1) for x in g]  # over (c, block end)
    total = [jnp.sum(x) for x in g]

    pairs = [(i, j) for i in range(blocks) for j in range(i + 1)]
    kk = dict.fromkeys(pairs, jnp.zeros((_SUB, _SUB), _F32))
    for keys in _key_blocks(cfg):
        tiles = [k_ref[span, keys] for span in spans]
        for i, j in pairs:
            kk[i, j] += _mm(tiles[i], tiles[j], cfg, transpose_b=True)

    def block_a(i: int, j: int) -> jax.Array:
        if i == j:
            pair_log = jnp.cumsum(jnp.where(cols < rows, g[i][:, None], 0.0), axis=0)
            mask = (cols < rows) & (doc[i][:, None] == doc[i][None, :])
        else:
            pair_log = head[i][:, None] + sum(total[j + 1 : i], jnp.zeros((), _F32)) + tail[j][None, :]
            mask = doc[i][:, None] == doc[j][None, :]
        return jnp.where(mask, beta[i][:, None] * kk[i, j] * jnp.exp(jnp.where(mask, pair_log, -jnp.inf)), 0.0)

    a = {pair: block_a(*pair) for pair in pairs}
    t = dict(zip([(i, i) for i in range(blocks)], _unit_lower_inverses([a[i, i] for i in range(blocks)])))
    for i in range(1, blocks):
        for j in range(i - 1, -1, -1):
            acc = sum((_mm_solve(a[i, m], t[m, j], cfg) for m in range(j, i)), jnp.zeros((_SUB, _SUB), _F32))
            t[i, j] = -_mm_solve(t[i, i], acc, cfg)
    zeros = jnp.zeros((_SUB, _SUB), _F32)
    for i in range(blocks):
        for j in range(blocks):
            inverse_ref[spans[i], spans[j]] = t.get((i, j), zeros).astype(inverse_ref.dtype)


def _chunk_fwd_kernel(
    q_ref, k_ref, v_ref, g_ref, beta_ref, doc_ref, inverse_ref, w_ref, u_ref, qt_ref, kt_ref, *pu_ref, cfg: _Config
) -> None:
    """One chunk: q, k [C, K], v [C, V], g, beta, doc [C], T [C, C] -> W, Qt, Kt [C, K], U [C, V] (+ PU [C, V])."""
    gamma, decay_in, decay_out = _chunk_gates(g_ref[...], doc_ref[...])
    beta = beta_ref[...]
    inverse = inverse_ref[...]
    p = _key_product(q_ref, k_ref, cfg) * (cfg.scale * gamma)
    for keys in _key_blocks(cfg):
        k = k_ref[:, keys].astype(_F32)
        w = _mm(inverse, (beta * decay_in)[:, None] * k, cfg)
        w_ref[:, keys] = w.astype(w_ref.dtype)
        qt = (cfg.scale * decay_in)[:, None] * q_ref[:, keys].astype(_F32) - _mm(p, w, cfg)
        qt_ref[:, keys] = qt.astype(qt_ref.dtype)
        kt_ref[:, keys] = (decay_out[:, None] * k).astype(kt_ref.dtype)
    for columns in _value_tiles(cfg):
        u = _mm(inverse, beta[:, None] * v_ref[:, columns].astype(_F32), cfg)
        u_ref[:, columns] = u.astype(u_ref.dtype)
        for ref in pu_ref:
            ref[:, columns] = _mm(p, u, cfg).astype(ref.dtype)


def _key_parts(cfg: _Config) -> list[pl.Slice]:
    """The key width split into power-of-two row ranges, largest first (96 -> 64 + 32, 128 -> 128): the scans
    hold the state as one [part, BV] float32 tile per range."""
    parts, start = [], 0
    for bit in reversed(range(cfg.key_width.bit_length())):
        if cfg.key_width & (1 << bit):
            parts.append(pl.ds(start, 1 << bit))
            start += 1 << bit
    return parts


def _state_rows(n: jax.Array, part: pl.Slice, cfg: _Config) -> pl.Slice:
    """Rows of ``part`` of the state of chunk n in a [N * K, BV] array of per-chunk states."""
    return pl.ds(pl.multiple_of(n * cfg.key_width + part.start, 16), part.size)


def _scan_fwd_kernel(
    w_ref, u_ref, kt_ref, qt_ref, pu_ref, decay_ref, h0_ref, o_ref, final_ref, *saved_refs, cfg: _Config
) -> None:
    """One (head, value tile): the loop over chunks carrying S [K, BV] (one tile per key part).

    Inputs per head: W, Kt, Qt [T, K]; U, PU [T, BV]; the chunks' decays d [N]; h0 [K, BV]. Writes O [T, BV] and the
    final state [K, BV]; with ``saved_refs`` (for the backward) also the state entering each chunk [N * K, BV] and
    v_new = U - W S [T, BV].
    """
    chunk, parts = cfg.chunk, _key_parts(cfg)
    num_chunks = decay_ref.shape[0]

    def step(n: jax.Array, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        v_new = u_ref[rows, :].astype(_F32)
        o = pu_ref[rows, :].astype(_F32)
        for part, tile in zip(parts, state):
            v_new -= _mm(w_ref[rows, part], tile, cfg)
            o += _mm(qt_ref[rows, part], tile, cfg)
        o_ref[rows, :] = o.astype(o_ref.dtype)
        if saved_refs:
            states_ref, v_new_ref = saved_refs
            for part, tile in zip(parts, state):
                states_ref[_state_rows(n, part, cfg), :] = tile.astype(states_ref.dtype)
            v_new_ref[rows, :] = v_new.astype(v_new_ref.dtype)
        decay = decay_ref[n]
        return tuple(
            decay * tile + _mm(kt_ref[rows, part], v_new, cfg, transpose_a=True) for part, tile in zip(parts, state)
        )

    initial = tuple(h0_ref[part, :].astype(_F32) for part in parts)
    final = jax.lax.fori_loop(0, num_chunks, step, initial)
    for part, tile in zip(parts, final):
        final_ref[part, :] = tile


def _scan_bwd_kernel(
    w_ref, qt_ref, kt_ref, decay_ref, do_ref, dfinal_ref, du_ref, d_states_ref, dh0_ref, *, cfg: _Config
) -> None:
    """One (head, value tile): the reverse loop over chunks carrying dS [K, BV] (one tile per key part), the
    cotangent of the state leaving the chunk.

    Inputs per head: W, Qt, Kt [T, K]; the chunks' decays d [N]; dO [T, BV]; dfinal [K, BV]. Writes
    dU = d(v_new) [T, BV], dS leaving every chunk [N * K, BV] (for ``_contract_finish_bwd_kernel``) and dh0 [K, BV].
    """
    chunk, parts = cfg.chunk, _key_parts(cfg)
    num_chunks = decay_ref.shape[0]

    def step(i: jax.Array, d_state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        n = num_chunks - 1 - i
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        d_v_new = jnp.zeros((chunk, cfg.block_v), _F32)
        for part, tile in zip(parts, d_state):
            d_states_ref[_state_rows(n, part, cfg), :] = tile.astype(d_states_ref.dtype)
            d_v_new += _mm(kt_ref[rows, part], tile, cfg)
        du_ref[rows, :] = d_v_new.astype(du_ref.dtype)
        decay = decay_ref[n]
        do = do_ref[rows, :]
        return tuple(
            decay * tile
            + _mm(qt_ref[rows, part], do, cfg, transpose_a=True)
            - _mm(w_ref[rows, part], d_v_new, cfg, transpose_a=True)
            for part, tile in zip(parts, d_state)
        )

    initial = tuple(dfinal_ref[part, :].astype(_F32) for part in parts)
    for part, tile in zip(parts, jax.lax.fori_loop(0, num_chunks, step, initial)):
        dh0_ref[part, :] = tile


def _value_bwd_kernel(
    q_ref,
    k_ref,
    v_ref,
    g_ref,
    beta_ref,
    doc_ref,
    inverse_ref,
    v_new_ref,
    du_ref,
    do_ref,
    dv_ref,
    dbeta_ref,
    dp_ref,
    da_ref,
    *,
    cfg: _Config,
) -> None:
    """One chunk: the cotangents of V, P and A through v_new, the only place T, U and W meet the outputs.

    O = PU + Qt S with Qt = diag(D) (scale Q) - P W is P v_new + diag(D) (scale Q) S, and v_new = U - W S =
    T Z with Z = diag(beta) V - diag(beta D) K S. So with dU_total = dU + P^T dO (dU: the scan's d(v_new)):
    d(P) = dO v_new^T, d(Z) = T^T dU_total, dv = diag(beta) d(Z), and, as T = (I + A)^-1,
    d(A) = -T^T dU_total Z^T T^T = -d(Z) v_new^T (strictly lower). Each is one product, without the cancellation
    of the U and W paths taken separately.

    From v_new, dU, dO [C, V]: writes dv [C, V], the V-part of dbeta [C], d(P) and d(A) [C, C].
    """
    gamma, _, _ = _chunk_gates(g_ref[...], doc_ref[...])
    p = _key_product(q_ref, k_ref, cfg) * (cfg.scale * gamma)
    beta = beta_ref[...]
    inverse = inverse_ref[...]
    d_p = jnp.zeros_like(p)
    d_a = jnp.zeros_like(p)
    d_beta = jnp.zeros_like(beta)
    for columns in _value_tiles(cfg):
        do = do_ref[:, columns].astype(_F32)
        v_new = v_new_ref[:, columns]
        d_p += _mm(do, v_new, cfg, transpose_b=True)
        du = du_ref[:, columns].astype(_F32) + _mm(p, do, cfg, transpose_a=True)
        d_z = _mm(inverse, du, cfg, transpose_a=True)
        d_a -= _mm(d_z, v_new, cfg, transpose_b=True)
        dv_ref[:, columns] = (beta[:, None] * d_z).astype(dv_ref.dtype)
        d_beta += jnp.sum(v_ref[:, columns].astype(_F32) * d_z, axis=1)
    rows, cols = _positions(cfg.chunk)
    dp_ref[...] = d_p.astype(dp_ref.dtype)
    da_ref[...] = jnp.where(rows > cols, d_a, 0.0).astype(da_ref.dtype)
    dbeta_ref[...] = d_beta


def _pairs_bwd_kernel(
    q_ref,
    k_ref,
    g_ref,
    beta_ref,
    doc_ref,
    inverse_ref,
    dp_ref,
    da_ref,
    dbeta_ref,
    dqk_ref,
    dkk_ref,
    pt_ref,
    pair_sums_ref,
    dbeta_out_ref,
    *,
    cfg: _Config,
) -> None:
    """One chunk: from d(P) and d(A) [C, C] of ``_value_bwd_kernel`` through P = (scale Q K^T) * Gamma and
    A = strictly_lower(diag(beta) (K K^T * Gamma)) to the pair level. Writes d(scale Q K^T), d(K K^T) (symmetrised)
    and P T (for ``_contract_finish_bwd_kernel``) [C, C] in the storage dtype, the row less column sums of the pair
    cotangent [C] (``_gate_grad``) and dbeta's A-part added to its V-part [C]."""
    rows, cols = _positions(cfg.chunk)
    gamma, _, _ = _chunk_gates(g_ref[...], doc_ref[...])
    beta = beta_ref[...]
    p = cfg.scale * _key_product(q_ref, k_ref, cfg) * gamma
    pt_ref[...] = _mm(p, inverse_ref[...], cfg).astype(pt_ref.dtype)
    d_p = dp_ref[...].astype(_F32)
    dqk_ref[...] = (d_p * gamma).astype(dqk_ref.dtype)
    d_pair = d_p * p  # the P path's part of d(Gamma) * Gamma, the cotangent of L
    d_a = da_ref[...].astype(_F32) * gamma
    d_kk = beta[:, None] * d_a
    dkk_ref[...] = (d_kk + d_kk.T).astype(dkk_ref.dtype)
    d_a = d_a * _key_product(k_ref, k_ref, cfg)  # d(A) * K K^T * Gamma
    dbeta_out_ref[...] = dbeta_ref[...] + jnp.sum(d_a, axis=1)
    d_pair = jnp.where(rows > cols, d_pair + beta[:, None] * d_a, 0.0)  # and the A path's
    pair_sums_ref[...] = jnp.sum(d_pair, axis=1) - jnp.sum(d_pair, axis=0)


def _contract_finish_bwd_kernel(
    v_new_ref,
    states_ref,
    d_states_ref,
    do_ref,
    du_ref,
    q_ref,
    k_ref,
    g_ref,
    beta_ref,
    doc_ref,
    inverse_ref,
    dqk_ref,
    dkk_ref,
    pt_ref,
    dq_ref,
    dk_ref,
    k_dxw_ref,
    q_dqt_ref,
    k_dkt_ref,
    ddecay_ref,
    *,
    cfg: _Config,
) -> None:
    """One (chunk, key block of BK = ``key_block`` rows): the contractions with the state, then dq and dk.

    With S [BK, V] the block's rows of the state entering the chunk and dS [BK, V] those of the cotangent of the
    state leaving it: dKt = v_new dS^T, dW = -dU S^T, dQt = dO S^T [C, BK], kept in registers. Qt =
    diag(D) (scale Q) - P W and W = T diag(beta D) K give d(diag(beta D) K) = T^T (dW - P^T dQt) = T^T dW - (P T)^T
    dQt, and Kt = diag(E) K. Writes the block's columns of dq, dk [C, BK] and its shares of the row sums
    k . d(diag(beta D) K), q . dQt, k . dKt [C] and of d(d) = sum(S * dS) (for ``_gates_bwd_kernel``). A chunk's
    programs read the same v_new, dU and dO [C, V], the later ones from the cache.
    """
    _, decay_in, decay_out = _chunk_gates(g_ref[...], doc_ref[...])
    beta_decay = beta_ref[...] * decay_in
    inverse, pt, d_qk, d_kk = inverse_ref[...], pt_ref[...], dqk_ref[...], dkk_ref[...]
    dw = jnp.zeros((cfg.chunk, cfg.key_block), _F32)
    dqt = jnp.zeros_like(dw)
    dkt = jnp.zeros_like(dw)
    d_decay = jnp.zeros((), _F32)
    for columns in _value_tiles(cfg):
        state = states_ref[:, columns]
        d_state = d_states_ref[:, columns]
        dkt += _mm(v_new_ref[:, columns], d_state, cfg, transpose_b=True)
        dw -= _mm(du_ref[:, columns], state, cfg, transpose_b=True)
        dqt += _mm(do_ref[:, columns], state, cfg, transpose_b=True)
        d_decay += jnp.sum(state.astype(_F32) * d_state.astype(_F32))
    q, k = q_ref[...].astype(_F32), k_ref[...].astype(_F32)
    d_xw = _mm(inverse, dw, cfg, transpose_a=True) - _mm(pt, dqt, cfg, transpose_a=True)
    k_dxw_ref[...] = jnp.sum(k * d_xw, axis=1)
    q_dqt_ref[...] = jnp.sum(q * dqt, axis=1)
    k_dkt_ref[...] = jnp.sum(k * dkt, axis=1)
    ddecay_ref[...] = jnp.full(ddecay_ref.shape, d_decay)
    dq = decay_in[:, None] * dqt + _mm(d_qk, k, cfg)  # d(scale Q)
    dq_ref[...] = (cfg.scale * dq).astype(dq_ref.dtype)
    dk = decay_out[:, None] * dkt + beta_decay[:, None] * d_xw + cfg.scale * _mm(d_qk, q, cfg, transpose_a=True)
    dk_ref[...] = (dk + _mm(d_kk, k, cfg)).astype(dk_ref.dtype)


def _gates_bwd_kernel(
    g_ref,
    beta_ref,
    doc_ref,
    pair_sums_ref,
    dbeta_ref,
    k_dxw_ref,
    q_dqt_ref,
    k_dkt_ref,
    ddecay_ref,
    dg_ref,
    dbeta_out_ref,
    *,
    cfg: _Config,
) -> None:
    """One chunk: dg and dbeta [C] from the pair level's row sums and dbeta (``_value_bwd_kernel``,
    ``_pairs_bwd_kernel``) and the key-side row sums and d(d) of ``_contract_finish_bwd_kernel`` (all [C])."""
    g, doc = g_ref[...], doc_ref[...]
    _, decay_in, decay_out = _chunk_gates(g, doc)
    k_dxw = k_dxw_ref[...]
    dbeta_out_ref[...] = dbeta_ref[...] + decay_in * k_dxw
    d_decay_in = cfg.scale * q_dqt_ref[...] + beta_ref[...] * k_dxw  # Qt holds diag(D) (scale Q)
    d_decay = jnp.max(ddecay_ref[...])  # the same value at every position of the chunk
    dg_ref[...] = _gate_grad(
        pair_sums_ref[...], d_decay_in * decay_in, k_dkt_ref[...] * decay_out, d_decay * _chunk_decay(g, doc)
    )


# ----------------------------------------------------------------------------------------------------------
# pallas_call wrappers, all on the kernel layout [B * H, T_padded, channels].
# ----------------------------------------------------------------------------------------------------------


def _chunk_spec(cfg: _Config, width: int) -> pl.BlockSpec:
    """[C, width] block of chunk n of head bh of a kernel-layout [B * H, T, width] array, grid (B * H, chunks)."""
    return pl.BlockSpec((None, cfg.chunk, width), lambda bh, n, *_: (bh, n, 0))


def _chunk_vector_spec(cfg: _Config) -> pl.BlockSpec:
    """[C] block of chunk n of head bh of a kernel-layout [B * H, T] array, grid (B * H, chunks)."""
    return pl.BlockSpec((None, cfg.chunk), lambda bh, n: (bh, n))


def _input_spec(cfg: _Config, rows: int, width: int | None, *, chunks: bool, value_tiles: bool = False) -> pl.BlockSpec:
    """A block of head bh of a caller-layout array, read and written in place (no transposes).

    [B, T, H, width] -> [rows, width] ([rows, BV] with ``value_tiles``), or [B, T, H] -> [rows] for width None.
    ``chunks``: grid (B * H, chunks, ...) and block n along T; else grid (B * H, value tiles) and all T rows.
    """

    def index(bh: jax.Array, n: jax.Array, *_) -> tuple:
        row_block = n if chunks else 0
        batch, head = bh // cfg.heads, bh % cfg.heads
        if width is None:
            return batch, row_block, head
        return batch, row_block, head, (n if value_tiles else 0)

    if width is None:
        return pl.BlockSpec((None, rows, None), index)
    return pl.BlockSpec((None, rows, None, cfg.block_v if value_tiles else width), index)


def _doc_spec(cfg: _Config) -> pl.BlockSpec:
    """[C] block of chunk n of the document indices [B, T] for head bh, grid (B * H, chunks)."""
    return pl.BlockSpec((None, cfg.chunk), lambda bh, n, *_: (bh // cfg.heads, n))


def _head_spec(rows: int, width: int) -> pl.BlockSpec:
    """All of head bh [rows, width] of a kernel-layout array, for grids (B * H, value tiles)."""
    return pl.BlockSpec((None, rows, width), lambda bh, j, *_: (bh, 0, 0))


def _decays_spec(num_chunks: int) -> pl.BlockSpec:
    """All N chunk decays [N] of head bh of a [B * H, N] array, for grids (B * H, value tiles)."""
    return pl.BlockSpec((None, num_chunks), lambda bh, j, *_: (bh, 0))


def _tile_spec(cfg: _Config, rows: int) -> pl.BlockSpec:
    """Value tile j of head bh [rows, BV] of a kernel-layout array, for grids (B * H, value tiles)."""
    return pl.BlockSpec((None, rows, cfg.block_v), lambda bh, j, *_: (bh, 0, j))


def _call(
    kernel, cfg: _Config, name: str, grid: tuple, args: list, in_specs: list, outs: list, num_stages: int = 1
) -> Any:
    """pallas_call of ``kernel`` (cfg bound) with KERNEL_WARPS[name] warps; outs: (spec, ShapeDtypeStruct) per
    output. Chunk-parallel kernels have no loop to pipeline (1 stage)."""
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=grid,
        in_specs=in_specs,
        out_specs=[spec for spec, _ in outs],
        out_shape=[shape for _, shape in outs],
        compiler_params=plgpu.CompilerParams(num_warps=KERNEL_WARPS[name], num_stages=num_stages),
        interpret=cfg.interpret,
        name=name,
    )(*args)


def _chunk_call(kernel, cfg: _Config, name: str, args: list, in_specs: list, outs: list) -> Any:
    """A chunk-parallel kernel: grid (B * H, chunks); the first argument is a caller-layout [B, T, H, .] array."""
    batch, length = args[0].shape[:2]
    grid = (batch * cfg.heads, length // cfg.chunk)
    return _call(kernel, cfg, name, grid, args, in_specs, outs)


def _solve(k: jax.Array, g: jax.Array, beta: jax.Array, doc: jax.Array, cfg: _Config) -> jax.Array:
    """T = (I + A)^-1 of every chunk, [B * H, T, C] in the matmul dtype (rows of chunk n at n * C).

    k: [B, T, H, key_width]; g, beta: float32 [B, T, H]; doc: int32 [B, T].
    """
    batch, length = k.shape[:2]
    gate = _input_spec(cfg, cfg.chunk, None, chunks=True)
    (inverse,) = _chunk_call(
        _solve_kernel,
        cfg,
        "gdn_solve",
        [k, g, beta, doc],
        [_input_spec(cfg, cfg.chunk, cfg.key_width, chunks=True), gate, gate, _doc_spec(cfg)],
        [(_chunk_spec(cfg, cfg.chunk), jax.ShapeDtypeStruct((batch * cfg.heads, length, cfg.chunk), cfg.matmul_dtype))],
    )
    return inverse


def _chunk_forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    doc: jax.Array,
    inverse: jax.Array,
    cfg: _Config,
) -> list[jax.Array]:
    """W, U, Qt, Kt, PU: kernel-layout [B * H, T, key_width] or [B * H, T, V], in the storage dtype."""
    batch, length = q.shape[:2]
    gate = _input_spec(cfg, cfg.chunk, None, chunks=True)
    key_in = _input_spec(cfg, cfg.chunk, cfg.key_width, chunks=True)
    key_out = (
        _chunk_spec(cfg, cfg.key_width),
        jax.ShapeDtypeStruct((batch * cfg.heads, length, cfg.key_width), cfg.matmul_dtype),
    )
    value_out = (
        _chunk_spec(cfg, cfg.value_dim),
        jax.ShapeDtypeStruct((batch * cfg.heads, length, cfg.value_dim), cfg.matmul_dtype),
    )
    return _chunk_call(
        _chunk_fwd_kernel,
        cfg,
        "gdn_chunk_fwd",
        [q, k, v, g, beta, doc, inverse],
        [key_in, key_in, _input_spec(cfg, cfg.chunk, cfg.value_dim, chunks=True), gate, gate]
        + [_doc_spec(cfg), _chunk_spec(cfg, cfg.chunk)],
        [key_out, value_out, key_out, key_out, value_out],
    )


def _scan_forward(
    w: jax.Array,
    u: jax.Array,
    kt: jax.Array,
    qt: jax.Array,
    pu: jax.Array,
    decays: jax.Array,
    h0: jax.Array,
    cfg: _Config,
    o_dtype: Any,
    save: bool,
) -> list[jax.Array]:
    """[o [B, T, H, V] in o_dtype, final state [B * H, K, V] (float32)] and with ``save`` also [the states entering
    each chunk [B * H, N * K, V], v_new [B * H, T, V]] in the storage dtype, for the backward. All inputs kernel
    layout (decays: [B * H, N], ``_chunk_decays``)."""
    heads, length, _ = w.shape
    num_chunks = length // cfg.chunk
    state_spec = _tile_spec(cfg, cfg.key_width)
    key_spec, value_spec = _head_spec(length, cfg.key_width), _tile_spec(cfg, length)
    o_spec = _input_spec(cfg, length, cfg.value_dim, chunks=False, value_tiles=True)
    outs = [
        (o_spec, jax.ShapeDtypeStruct((heads // cfg.heads, length, cfg.heads, cfg.value_dim), o_dtype)),
        (state_spec, jax.ShapeDtypeStruct((heads, cfg.key_width, cfg.value_dim), _F32)),
    ]
    if save:
        states_shape = (heads, num_chunks * cfg.key_width, cfg.value_dim)
        outs += [
            (_tile_spec(cfg, num_chunks * cfg.key_width), jax.ShapeDtypeStruct(states_shape, cfg.matmul_dtype)),
            (value_spec, jax.ShapeDtypeStruct((heads, length, cfg.value_dim), cfg.matmul_dtype)),
        ]
    step_bytes = (3 * cfg.key_width + 2 * cfg.block_v) * cfg.chunk * cfg.matmul_dtype.itemsize
    return _call(
        _scan_fwd_kernel,
        cfg,
        "gdn_scan_fwd",
        (heads, cfg.num_v_blocks),
        [w, u, kt, qt, pu, decays, h0],
        [key_spec, value_spec, key_spec, key_spec, value_spec, _decays_spec(num_chunks), state_spec],
        outs,
        _scan_stages(step_bytes, heads * cfg.num_v_blocks, cfg),
    )


def _scan_backward(
    w: jax.Array,
    qt: jax.Array,
    kt: jax.Array,
    decays: jax.Array,
    do: jax.Array,
    dfinal: jax.Array,
    cfg: _Config,
) -> list[jax.Array]:
    """The reverse scan (``_scan_bwd_kernel``): [dU [B * H, T, V], dS leaving each chunk [B * H, N * K, V] (both in
    the storage dtype), dh0 [B * H, K, V] (float32)]. do: [B, T, H, V]; the rest kernel layout (decays: [B * H, N])."""
    heads, length, _ = w.shape
    num_chunks = length // cfg.chunk
    key_spec, value_spec = _head_spec(length, cfg.key_width), _tile_spec(cfg, length)
    state_spec = _tile_spec(cfg, cfg.key_width)
    states_shape = (heads, num_chunks * cfg.key_width, cfg.value_dim)
    step_bytes = (3 * cfg.key_width + cfg.block_v) * cfg.chunk * cfg.matmul_dtype.itemsize
    return _call(
        _scan_bwd_kernel,
        cfg,
        "gdn_scan_bwd",
        (heads, cfg.num_v_blocks),
        [w, qt, kt, decays, do, dfinal],
        [key_spec, key_spec, key_spec, _decays_spec(num_chunks)]
        + [_input_spec(cfg, length, cfg.value_dim, chunks=False, value_tiles=True), state_spec],
        [
            (value_spec, jax.ShapeDtypeStruct((heads, length, cfg.value_dim), cfg.matmul_dtype)),
            (_tile_spec(cfg, num_chunks * cfg.key_width), jax.ShapeDtypeStruct(states_shape, cfg.matmul_dtype)),
            (state_spec, jax.ShapeDtypeStruct((heads, cfg.key_width, cfg.value_dim), _F32)),
        ],
        _scan_stages(step_bytes, heads * cfg.num_v_blocks, cfg),
    )


def _value_pairs_backward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    doc: jax.Array,
    inverse: jax.Array,
    v_new: jax.Array,
    du: jax.Array,
    do: jax.Array,
    cfg: _Config,
) -> list[jax.Array]:
    """The value and pairs kernels: [dv [B, T, H, V] in v's dtype; d(scale Q K^T), d(K K^T), P T [B * H, T, C] in the
    storage dtype; the pair sums and dbeta but for its W path [B * H, T] (float32)].

    q, k, v, g, beta, doc: caller layout. v_new, du: [B * H, T, V]; do: [B, T, H, V].
    """
    heads, length, _ = v_new.shape
    key_in = _input_spec(cfg, cfg.chunk, cfg.key_width, chunks=True)
    value_in = _input_spec(cfg, cfg.chunk, cfg.value_dim, chunks=True)
    gate = _input_spec(cfg, cfg.chunk, None, chunks=True)
    value_spec, square_spec = _chunk_spec(cfg, cfg.value_dim), _chunk_spec(cfg, cfg.chunk)
    vector_spec = _chunk_vector_spec(cfg)
    vector = (vector_spec, jax.ShapeDtypeStruct((heads, length), _F32))
    square_stored = (square_spec, jax.ShapeDtypeStruct((heads, length, cfg.chunk), cfg.matmul_dtype))
    gates = [g, beta, doc]
    gate_specs = [gate, gate, _doc_spec(cfg)]
    dv, d_beta, d_p, d_a = _chunk_call(
        _value_bwd_kernel,
        cfg,
        "gdn_value_bwd",
        [q, k, v, *gates, inverse, v_new, du, do],
        [key_in, key_in, value_in, *gate_specs, square_spec, value_spec, value_spec, value_in],
        [(value_in, jax.ShapeDtypeStruct(v.shape, v.dtype)), vector, square_stored, square_stored],
    )
    d_qk, d_kk, pt, pair_sums, d_beta = _chunk_call(
        _pairs_bwd_kernel,
        cfg,
        "gdn_pairs_bwd",
        [q, k, *gates, inverse, d_p, d_a, d_beta],
        [key_in, key_in, *gate_specs] + [square_spec] * 3 + [vector_spec],
        [square_stored, square_stored, square_stored, vector, vector],
    )
    return [dv, d_qk, d_kk, pt, pair_sums, d_beta]


def _contract_finish_backward(
    q: jax.Array,
    k: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    doc: jax.Array,
    inverse: jax.Array,
    v_new: jax.Array,
    states: jax.Array,
    d_states: jax.Array,
    du: jax.Array,
    do: jax.Array,
    *pairs: jax.Array,
    cfg: _Config,
) -> list[jax.Array]:
    """``_contract_finish_bwd_kernel``, grid (B * H, chunks, K / BK): [dq, dk [B, T, H, key_width] in q's and k's
    dtype; the row sums k . d(diag(beta D) K), q . dQt, k . dKt and d(d) [B * H, T] (float32, d(d) repeated over each
    chunk's positions)].

    q, k, g, beta, doc: caller layout. v_new, du: [B * H, T, V]; states, d_states: [B * H, N * K, V];
    do: [B, T, H, V]; pairs: d(scale Q K^T), d(K K^T), P T [B * H, T, C].
    """
    heads, length, _ = v_new.shape
    blocks = cfg.key_width // cfg.key_block
    value_spec = _chunk_spec(cfg, cfg.value_dim)
    state_spec = pl.BlockSpec((None, cfg.key_block, cfg.value_dim), lambda bh, n, kb: (bh, n * blocks + kb, 0))
    key_spec = pl.BlockSpec(
        (None, cfg.chunk, None, cfg.key_block), lambda bh, n, kb: (bh // cfg.heads, n, bh % cfg.heads, kb)
    )
    gate, square_spec = _input_spec(cfg, cfg.chunk, None, chunks=True), _chunk_spec(cfg, cfg.chunk)
    sums_spec = pl.BlockSpec((None, None, cfg.chunk), lambda bh, n, kb: (bh, kb, n))
    sums = (sums_spec, jax.ShapeDtypeStruct((heads, blocks, length), _F32))
    dq, dk, *row_sums = _call(
        _contract_finish_bwd_kernel,
        cfg,
        "gdn_contract_finish_bwd",
        (heads, length // cfg.chunk, blocks),
        [v_new, states, d_states, do, du, q, k, g, beta, doc, inverse, *pairs],
        [value_spec, state_spec, state_spec, _input_spec(cfg, cfg.chunk, cfg.value_dim, chunks=True), value_spec]
        + [key_spec, key_spec, gate, gate, _doc_spec(cfg)]
        + [square_spec] * 4,
        [(key_spec, jax.ShapeDtypeStruct(q.shape, q.dtype)), (key_spec, jax.ShapeDtypeStruct(k.shape, k.dtype))]
        + [sums] * 4,
    )
    return [dq, dk] + [jnp.sum(x, axis=1) for x in row_sums]


def _gates_backward(
    g: jax.Array, beta: jax.Array, doc: jax.Array, *vectors: jax.Array, cfg: _Config
) -> list[jax.Array]:
    """dg, dbeta [B, T, H] (float32) from the pair sums, dbeta but for its W path, and the row sums and d(d) of
    ``_contract_finish_backward`` (``vectors``, [B * H, T] each)."""
    gate, vector_spec = _input_spec(cfg, cfg.chunk, None, chunks=True), _chunk_vector_spec(cfg)
    gate_out = (gate, jax.ShapeDtypeStruct(g.shape, _F32))
    return _chunk_call(
        _gates_bwd_kernel,
        cfg,
        "gdn_gates_bwd",
        [g, beta, doc, *vectors],
        [gate, gate, _doc_spec(cfg)] + [vector_spec] * len(vectors),
        [gate_out, gate_out],
    )


# ----------------------------------------------------------------------------------------------------------
# Differentiable core on the kernel layout.
# ----------------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _gdn(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    h0: jax.Array,
    doc: jax.Array,
    cfg: _Config,
) -> tuple[jax.Array, jax.Array]:
    """The forward on padded caller-layout inputs.

    Args:
      q, k: [B, T, H, key_width] (q unscaled: cfg.scale); v: [B, T, H, V]; g, beta: float32 [B, T, H];
      h0: float32 [B * H, key_width, V]; doc: int32 [B, T], document index within each chunk. T a multiple of C.

    Returns:
      o [B, T, H, V] in v's dtype and the final state [B * H, key_width, V] in float32.
    """
    outputs, _ = _forward(q, k, v, g, beta, h0, doc, cfg, save=False)
    return outputs


def _run_stage(name: str, fn: Callable[..., Any], *args: jax.Array) -> Any:
    """fn(*args): how ``_forward`` and ``_backward`` run each stage (``kernel_stages`` also records them)."""
    return fn(*args)


def _forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    h0: jax.Array,
    doc: jax.Array,
    cfg: _Config,
    save: bool,
    stage: Callable[..., Any] = _run_stage,
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """(o, final) and, with ``save``, the residuals of the backward: the inputs, the chunks' inverses T, W, Qt, Kt
    and decays d (which the forward computes anyway) and the states entering every chunk and v_new (written by the
    forward scan, so the backward runs only the reverse scan; under the model's rematerialisation they live only
    while the layer's backward runs). ``stage(name, fn, *args)`` runs each stage of STAGE_KERNELS."""
    inverse = stage("solve", functools.partial(_solve, cfg=cfg), k, g, beta, doc)
    w, u, qt, kt, pu = stage("chunk_fwd", functools.partial(_chunk_forward, cfg=cfg), q, k, v, g, beta, doc, inverse)
    decays = _chunk_decays(g, doc, cfg)
    scan = functools.partial(_scan_forward, cfg=cfg, o_dtype=v.dtype, save=save)
    o, final, *saved = stage("scan_fwd", scan, w, u, kt, qt, pu, decays, h0)
    return (o, final), (q, k, v, g, beta, doc, inverse, w, qt, kt, decays, *saved)


def _chunk_decays(g: jax.Array, doc: jax.Array, cfg: _Config) -> jax.Array:
    """``_chunk_decay`` of every chunk, [B * H, N] float32, by XLA (the scans then read one number per step rather
    than reducing the chunk's gates and document indices). g: float32 [B, T, H]; doc: int32 [B, T]."""
    batch, length, heads = g.shape
    num_chunks = length // cfg.chunk
    g_chunks = g.reshape(batch, num_chunks, cfg.chunk, heads).transpose(0, 3, 1, 2)  # [B, H, N, C]
    doc_chunks = doc.reshape(batch, num_chunks, cfg.chunk)
    per_head = jax.vmap(_chunk_decay)  # over chunks
    decays = jax.vmap(jax.vmap(per_head, in_axes=(0, None)))(g_chunks, doc_chunks)  # over batch rows, then heads
    return decays.reshape(batch * heads, num_chunks)


def _gdn_fwd(*args: Any) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    return _forward(*args, save=True)


def _backward(
    cfg: _Config,
    residuals: tuple[jax.Array, ...],
    cotangents: tuple[jax.Array, jax.Array],
    stage: Callable[..., Any] = _run_stage,
) -> tuple[jax.Array | None, ...]:
    """The reverse scan, the value and pairs kernels, the contractions with the saved states fused with the key
    loop, then the gates; ``stage`` as in ``_forward``."""
    q, k, v, g, beta, doc, inverse, w, qt, kt, decays, states, v_new = residuals
    do, dfinal = cotangents
    du, d_states, dh0 = stage("scan_bwd", functools.partial(_scan_backward, cfg=cfg), w, qt, kt, decays, do, dfinal)
    value_pairs = functools.partial(_value_pairs_backward, cfg=cfg)
    dv, *pairs, pair_sums, d_beta = stage("value_pairs_bwd", value_pairs, q, k, v, g, beta, doc, inverse, v_new, du, do)
    contract_finish = functools.partial(_contract_finish_backward, cfg=cfg)
    args = (q, k, g, beta, doc, inverse, v_new, states, d_states, du, do, *pairs)
    dq, dk, *row_sums = stage("contract_finish_bwd", contract_finish, *args)
    gates = functools.partial(_gates_backward, cfg=cfg)
    dg, dbeta = stage("gates_bwd", gates, g, beta, doc, pair_sums, d_beta, *row_sums)
    return dq, dk, dv, dg, dbeta, dh0, None


_gdn.defvjp(_gdn_fwd, _backward)


# ----------------------------------------------------------------------------------------------------------
# Public entry: checks, layout and padding.
# ----------------------------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise ValueError(f"gated_delta_rule: {message}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _default_block_v(batch_heads: int, value_width: int) -> int:
    """BV for the scans: the narrowest of 64, 32 and 16 (more programs, each with a shorter step) while the
    B * H * V / BV programs stay within 1.5 per SM, so the scans fill the GPU without queueing (an SM runs two scan
    programs at once but not at full speed). Measured on an H100 (BENCHMARKS.md): 32 at the Olmo Hybrid shape
    (180 programs), 16 at B * H = 16, V = 128 (128 programs), 64 at B * H = 32, V = 256 (128 programs)."""
    sms = _sm_count()
    block_v = min(64, value_width & -value_width)
    while block_v > 16 and batch_heads * value_width // (block_v // 2) <= 1.5 * sms:
        block_v //= 2
    return block_v


def _make_config(
    q: jax.Array,
    v: jax.Array,
    named: dict[str, jax.Array],
    chunk_size: int,
    interpret: bool,
    matmul_dtype: Any,
    block_v: int | None,
    scale: float,
) -> _Config:
    """Checks the limits of the kernels (ValueError before any launch) and picks the padding and tiles."""
    if isinstance(scale, jax.core.Tracer):
        _fail("scale is compiled into the pallas_gpu kernels and must be a Python number, not a traced value")
    for name, x in named.items():
        if np.dtype(x.dtype) not in DTYPES:
            _fail(f"the pallas_gpu kernel takes float32 or bfloat16 inputs; {name} has dtype {x.dtype}")
    key_dim, value_dim = q.shape[-1], v.shape[-1]
    for name, dim in (("K", key_dim), ("V", value_dim)):
        if dim > MAX_HEAD_DIM:
            _fail(f"the pallas_gpu kernel supports head dims up to {MAX_HEAD_DIM}; got {name} = {dim}")
    if chunk_size not in CHUNK_SIZES:
        _fail(f"the pallas_gpu kernel supports chunk_size in {CHUNK_SIZES}; got {chunk_size}")
    if np.dtype(matmul_dtype) not in _MATMUL_DTYPES:
        _fail(f"the pallas_gpu kernel supports matmul_dtype float32 or bfloat16; got {np.dtype(matmul_dtype)}")
    value_width = _round_up(value_dim, 16)
    if block_v is None:
        block_v = _default_block_v(q.shape[0] * q.shape[2], value_width)
    elif block_v not in _BLOCK_V:
        _fail(f"block_v must be one of {_BLOCK_V}; got {block_v}")
    key_width = _round_up(key_dim, 16)
    return _Config(
        chunk=int(chunk_size),
        heads=q.shape[2],
        key_width=key_width,
        block_v=block_v,
        num_v_blocks=-(-value_dim // block_v),
        matmul_dtype=np.dtype(matmul_dtype),
        interpret=bool(interpret),
        scale=float(scale),
    )


def _pad(x: jax.Array, length: int, width: int | None = None) -> jax.Array:
    """Zero-pads [B, T, H(, D)] to T = length (and D = width); a no-op (no copy) when nothing is missing."""
    pads = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    if width is not None:
        pads[-1] = (0, width - x.shape[-1])
    return jnp.pad(x, pads) if any(p for _, p in pads) else x


def _documents(resets: jax.Array, length: int, chunk: int) -> jax.Array:
    """bool [B, T] -> int32 [B, length]: document starts so far within each chunk."""
    batch, steps = resets.shape
    resets = jnp.pad(resets.astype(jnp.int32), ((0, 0), (0, length - steps)))
    return jnp.cumsum(resets.reshape(batch, length // chunk, chunk), axis=-1).reshape(batch, length)


def _prepare(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    resets: jax.Array,
    cfg: _Config,
) -> tuple[jax.Array, ...]:
    """The kernels' inputs, still in the caller's layout: q, k [B, T', H, key_width], v [B, T', H, V'], float32 g,
    beta [B, T', H] and doc [B, T'], with T' the length rounded up to a multiple of C (copies only where padding
    is needed)."""
    length = _round_up(q.shape[1], cfg.chunk)
    return (
        _pad(q, length, cfg.key_width),
        _pad(k, length, cfg.key_width),
        _pad(v, length, cfg.value_dim),
        _pad(g.astype(_F32), length),
        _pad(beta.astype(_F32), length),
        _documents(resets, length, cfg.chunk),
    )


def _kernel_state(state: jax.Array, cfg: _Config) -> jax.Array:
    """[B, H, K, V] -> float32 [B * H, key_width, V'], zero-padded: a state (or its cotangent) on the kernel layout."""
    batch, heads, key_dim, value_dim = state.shape
    pads = ((0, 0), (0, 0), (0, cfg.key_width - key_dim), (0, cfg.value_dim - value_dim))
    return jnp.pad(state.astype(_F32), pads).reshape(batch * heads, cfg.key_width, cfg.value_dim)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    cfg: _Config,
) -> tuple[jax.Array, jax.Array]:
    """Pads what the kernels need padded, runs ``_gdn`` and slices back to [B, T, H, V] / [B, H, K, V]."""
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    h0 = _kernel_state(initial_state, cfg)
    q, k, v, g, beta, doc = _prepare(q, k, v, g, beta, resets, cfg)
    o, final = _gdn(q, k, v, g, beta, h0, doc, cfg)
    final = final.reshape(batch, heads, cfg.key_width, cfg.value_dim)
    return o[:, :length, :, :value_dim], final[:, :, :key_dim, :value_dim]


def pallas_gpu_gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float,
    chunk_size: int,
    *,
    interpret: bool = False,
    matmul_dtype: Any = jnp.float32,
    block_v: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Chunked gated delta rule on the GPU (Pallas / Triton), differentiable (custom VJP, Pallas backward): a
    ``spec.GatedDeltaRule`` with q, k, v, g, beta and initial_state in DTYPES, K, V up to MAX_HEAD_DIM, chunk_size in
    CHUNK_SIZES and scale a Python number (the kernels apply it in float32; no scaled copy of q is made). o comes back
    in v's dtype, the final state in float32.

    interpret: run the kernels with the Pallas interpreter (CPU tests).
    matmul_dtype: float32 (every matmul at float32 accuracy) or bfloat16 (see the module docstring).
    block_v: value columns per scan program, 16, 32 or 64; default ``_default_block_v`` (by the GPU's SMs).

    Raises:
      ValueError: for K or V above MAX_HEAD_DIM, an input not in DTYPES, an unsupported chunk_size, matmul_dtype or
        block_v, or a traced scale.
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state}
    cfg = _make_config(q, v, named, chunk_size, interpret, matmul_dtype, block_v, scale)
    if q.shape[1] == 0:
        return jnp.zeros(v.shape, v.dtype), initial_state.astype(_F32)
    return _run(q, k, v, g, beta, initial_state, resets, cfg)


class Stage(NamedTuple):
    """One stage of the kernels, to time on its own (``kernel_stages``).

    fn: the stage as a function of kernel-layout arrays; each new jit of it traces its kernels afresh, with the
      warps KERNEL_WARPS holds then.
    args: fn's arguments, computed by the stages before it.
    call: fn compiled on args, as an argument-less call.
    """

    fn: Callable[..., Any]
    args: tuple[jax.Array, ...]
    call: Callable[[], Any]


# The pallas_call names (KERNEL_WARPS keys) of each stage, in the order the forward and the backward run them.
STAGE_KERNELS = {
    "solve": ("gdn_solve",),
    "chunk_fwd": ("gdn_chunk_fwd",),
    "scan_fwd": ("gdn_scan_fwd",),
    "scan_bwd": ("gdn_scan_bwd",),
    "value_pairs_bwd": ("gdn_value_bwd", "gdn_pairs_bwd"),
    "contract_finish_bwd": ("gdn_contract_finish_bwd",),
    "gates_bwd": ("gdn_gates_bwd",),
}


def kernel_stages(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float,
    chunk_size: int,
    do: jax.Array,
    dfinal: jax.Array,
    *,
    interpret: bool = False,
    matmul_dtype: Any = jnp.float32,
    block_v: int | None = None,
) -> dict[str, Stage]:
    """The forward and backward of ``pallas_gpu_gated_delta_rule`` split into the stages of STAGE_KERNELS, to time
    each kernel: the same functions the custom VJP runs, each compiled on its own.

    Args:
      q, ..., block_v: as for ``pallas_gpu_gated_delta_rule`` (T > 0).
      do: [B, T, H, V] in v's dtype and dfinal: [B, H, K, V], the cotangents of o and the final state.

    Returns:
      {stage name: Stage} in STAGE_KERNELS' order. Each stage has run once, compiled, to give the later ones their
      arguments; the XLA work between stages (padding, the chunks' decays) is outside every stage.
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state}
    cfg = _make_config(q, v, named, chunk_size, interpret, matmul_dtype, block_v, scale)
    length = _round_up(q.shape[1], cfg.chunk)
    q, k, v, g, beta, doc = _prepare(q, k, v, g, beta, resets, cfg)
    stages = {}

    def record(name: str, fn: Callable[..., Any], *args: jax.Array) -> Any:
        call = functools.partial(jax.jit(fn), *args)
        stages[name] = Stage(fn, args, call)
        return call()

    _, residuals = _forward(q, k, v, g, beta, _kernel_state(initial_state, cfg), doc, cfg, save=True, stage=record)
    _backward(cfg, residuals, (_pad(do, length, cfg.value_dim), _kernel_state(dfinal, cfg)), stage=record)
    return stages


BACKEND = Backend(
    name="pallas_gpu",
    run=pallas_gpu_gated_delta_rule,
    platform="gpu",
    chunk_sizes=CHUNK_SIZES,
    max_head_dim=MAX_HEAD_DIM,
    dtypes=DTYPES,
    run_bfloat16=functools.partial(pallas_gpu_gated_delta_rule, matmul_dtype=jnp.bfloat16),
)
