"""Chunked gated delta rule as Pallas Mosaic TPU kernels: the forward, and the sequential part of the backward.

A ``spec.GatedDeltaRule`` (``naive.py`` has the recurrence). Per batch b and head h the tokens are split into chunks
of C. Within a chunk, with i, j chunk positions and L_ij the sum of g over (j, i],

    Gamma_ij = exp(L_ij)                     for j <= i in the same document, else 0
    D_i      = exp(sum of g over [0, i])     while no document starts at or before i, else 0
    E_j      = Gamma_{C-1, j}                (token j's decay to the chunk's end)
    A        = strictly_lower(diag(beta) (K K^T * Gamma))
    W        = (I + A)^-1 diag(beta * D) K ;  U = (I + A)^-1 diag(beta) V

and across chunks, carrying the state S [K, V] in float32,

    v_new = U - W S ;  O = scale ((Q * D) S + (Q K^T * Gamma) v_new) ;  S <- D_{C-1} S + (E * K)^T v_new.

Decomposition, two ``pl.pallas_call`` kernels on the layout [B * H, N chunks, C, channels]:

1. ``_prep_kernel``, grid (B * H, N), both axes "parallel": the chunk-parallel algebra. Gamma and D come from
   direct sums of the gates (L = (lower * g) @ strictly_lower, a masked sum of non-positive gates, never a
   difference of cumulative sums) and document counts (masked row sums of the reset flags); every exponent is
   masked to -inf before ``exp``, so no positive exponent is formed. Then A, and W, U by in-place forward
   substitution over the C rows (a ``fori_loop`` of [1, C] x [C, K + V] matmuls on the output refs).
2. ``_scan_kernel``, grid (B * H, N), dimension semantics ("parallel", "arbitrary"): per chunk it forms
   (Q K^T) * Gamma, v_new, O and the next state. The state S lives in a float32 VMEM scratch buffer [K, V]
   carried across the sequential chunk axis, initialised from ``initial_state`` at chunk 0; the final state
   is written at the last chunk.

Gradients: ``pallas_tpu_gated_delta_rule`` is a ``jax.custom_vjp``. Its backward is the VJP of the chunked form
(``chunked.py``) with that form's sequential part, ``lax_state_scan``, replaced by ``_pallas_state_scan``: a Pallas
forward kernel that records the state entering every chunk and v_new (state in a VMEM scratch buffer), and a
Pallas reverse kernel, chunks visited last to first, that carries the state's cotangent in VMEM and writes the
cotangents of W, U, (E * K), the chunk decays and the initial state. The chunk-parallel algebra around it (WY
factors, decays, outputs) is differentiated by XLA, which runs it as batched matmuls.

TPU tiling: K and V are zero-padded to multiples of 128 (zero key/query/value channels change nothing), T to a
multiple of C with q = k = v = g = beta = 0 (which leaves the state unchanged); outputs are sliced back. Blocks are
[C, 128 * m] (rows a multiple of 8) and [C, C] / [C, 1] / [1, C] (full trailing dims), so C must be a multiple of 8; the
supported chunk sizes are 16, 32 and 64. All matmuls are float32 with ``Precision.HIGHEST``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.gdn.chunked import _from_chunks, _to_chunks, chunked_gated_delta_rule
from pallas_kernels.gdn.spec import Backend

# The calls the kernels take (``BACKEND``): K, V up to MAX_HEAD_DIM, these chunk sizes, float32 inputs.
MAX_HEAD_DIM = 256
CHUNK_SIZES = (16, 32, 64)
DTYPES = (np.dtype(np.float32),)
_LANES = 128
_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_inputs(q: jax.Array, v: jax.Array, arrays: tuple[jax.Array, ...], chunk_size: int) -> None:
    """Raises ValueError before launch on a head dim above MAX_HEAD_DIM, an input not in DTYPES or a chunk size not in
    CHUNK_SIZES."""
    for name, dim in (("K", q.shape[-1]), ("V", v.shape[-1])):
        if dim > MAX_HEAD_DIM:
            raise ValueError(f"pallas_tpu gated delta rule: {name} = {dim} exceeds the limit {MAX_HEAD_DIM}")
    for name, x in zip(("q", "k", "v", "g", "beta", "initial_state"), arrays):
        if np.dtype(x.dtype) not in DTYPES:
            raise ValueError(f"pallas_tpu gated delta rule: {name} has dtype {x.dtype}; only float32 is supported")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"pallas_tpu gated delta rule: chunk_size = {chunk_size}; supported: {CHUNK_SIZES}")


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    """Zero-pads the last axis of x up to size."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [M, N] @ b [N, P] in float32 at full precision."""
    return jnp.dot(a, b, precision=_HIGHEST, preferred_element_type=_F32)


def _dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [M, N] @ b [P, N]^T in float32 at full precision."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST, preferred_element_type=_F32)


def _prep_kernel(
    k_ref, v_ref, g_ref, beta_ref, reset_row_ref, reset_col_ref, w_ref, u_ref, gamma_ref, decay_in_ref, a_ref
) -> None:
    """Chunk-parallel algebra of one chunk of one (batch, head): Gamma, D and the WY factors W, U.

    Refs (blocks): k [C, K]; v [C, V]; g [1, C]; beta [C, 1]; resets as 0/1 float32 [1, C] and [C, 1]; outputs
    w [C, K], u [C, V], gamma [C, C], decay_in (D) [C, 1]; scratch a [C, C] float32.
    """
    chunk = g_ref.shape[-1]
    rows = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    lower = (rows >= cols).astype(_F32)
    strictly_lower = (rows > cols).astype(_F32)
    g = g_ref[...]
    # L_ij = sum of g_m over j < m <= i: a direct sum of non-positive gates, never a difference of cumsums.
    pair_log_decay = _dot(lower * g, strictly_lower)
    doc_col = jnp.sum(lower * reset_row_ref[...], axis=1, keepdims=True)
    doc_row = jnp.sum((rows <= cols).astype(_F32) * reset_col_ref[...], axis=0, keepdims=True)
    same_document = (rows >= cols) & (doc_col == doc_row)
    gamma = jnp.exp(jnp.where(same_document, pair_log_decay, -jnp.inf))
    log_decay_in = jnp.sum(lower * g, axis=1, keepdims=True)
    decay_in = jnp.exp(jnp.where(doc_col == 0.0, log_decay_in, -jnp.inf))
    gamma_ref[...] = gamma
    decay_in_ref[...] = decay_in

    k, beta = k_ref[...], beta_ref[...]
    a_ref[...] = strictly_lower * beta * _dot_nt(k, k) * gamma
    w_ref[...] = (beta * decay_in) * k
    u_ref[...] = beta * v_ref[...]

    def solve_row(i: jax.Array, carry: None) -> None:
        """x_i <- rhs_i - sum_{j < i} A_ij x_j in place (A_ij = 0 for j >= i; rows j > i still hold rhs)."""
        row = a_ref[pl.ds(i, 1), :]
        w_ref[pl.ds(i, 1), :] = w_ref[pl.ds(i, 1), :] - _dot(row, w_ref[...])
        u_ref[pl.ds(i, 1), :] = u_ref[pl.ds(i, 1), :] - _dot(row, u_ref[...])
        return carry

    jax.lax.fori_loop(1, chunk, solve_row, None)


def _scan_kernel(q_ref, k_ref, w_ref, u_ref, gamma_ref, decay_in_ref, state0_ref, o_ref, final_ref, state_ref) -> None:
    """One chunk of one (batch, head): O and the state update.

    Refs (blocks): q (already scaled), k, w [C, K]; u [C, V]; gamma [C, C]; decay_in (D) [C, 1]; state0 [K, V]
    (initial state); outputs o [C, V], final [K, V]; scratch state [K, V] float32.
    """
    chunk = pl.program_id(1)

    @pl.when(chunk == 0)
    def _init() -> None:
        state_ref[...] = state0_ref[...]

    q, k, gamma, decay_in, state = q_ref[...], k_ref[...], gamma_ref[...], decay_in_ref[...], state_ref[...]
    v_new = u_ref[...] - _dot(w_ref[...], state)
    o_ref[...] = _dot(q * decay_in, state) + _dot(_dot_nt(q, k) * gamma, v_new)
    k_to_end = k.T * gamma[-1:, :]
    state_ref[...] = decay_in[-1:, :] * state + _dot(k_to_end, v_new)

    @pl.when(chunk == pl.num_programs(1) - 1)
    def _write_final() -> None:
        final_ref[...] = state_ref[...]


def _chunk_spec(rows: int, cols: int) -> pl.BlockSpec:
    """Block [rows, cols] of chunk n of head bh in an array [B * H, N, rows, cols]."""
    return pl.BlockSpec((None, None, rows, cols), lambda bh, n: (bh, n, 0, 0))


def _prep_call(
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    resets: jax.Array,
    interpret: bool | pltpu.InterpretParams,
) -> tuple[jax.Array, ...]:
    """Runs ``_prep_kernel`` over all chunks in parallel.

    Args:
      k [B * H, N, C, K]; v [B * H, N, C, V]; g, beta [B * H, N, C]; resets float32 0/1 [B * H, N, C].

    Returns:
      w [B * H, N, C, K], u [B * H, N, C, V], gamma [B * H, N, C, C], decay_in [B * H, N, C, 1].
    """
    heads, num_chunks, chunk, key_dim = k.shape
    out_shapes = [(chunk, key_dim), (chunk, v.shape[-1]), (chunk, chunk), (chunk, 1)]
    in_shapes = out_shapes[:2] + [(1, chunk), (chunk, 1), (1, chunk), (chunk, 1)]
    row, col = g[..., None, :], beta[..., :, None]
    return pl.pallas_call(
        _prep_kernel,
        grid=(heads, num_chunks),
        in_specs=[_chunk_spec(*shape) for shape in in_shapes],
        out_specs=[_chunk_spec(*shape) for shape in out_shapes],
        out_shape=[jax.ShapeDtypeStruct((heads, num_chunks, *shape), _F32) for shape in out_shapes],
        scratch_shapes=[pltpu.VMEM((chunk, chunk), _F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(k, v, row, col, resets[..., None, :], resets[..., :, None])


def _scan_call(
    q: jax.Array,
    k: jax.Array,
    prepared: tuple[jax.Array, ...],
    initial_state: jax.Array,
    interpret: bool | pltpu.InterpretParams,
) -> tuple[jax.Array, jax.Array]:
    """Runs ``_scan_kernel``, sequential over chunks.

    Args:
      q (scaled), k [B * H, N, C, K]; prepared: ``_prep_call``'s outputs; initial_state [B * H, K, V].

    Returns:
      o [B * H, N, C, V] and the final state [B * H, K, V].
    """
    w, u, gamma, decay_in = prepared
    heads, num_chunks, chunk, key_dim = q.shape
    value_dim = u.shape[-1]
    state_spec = pl.BlockSpec((None, key_dim, value_dim), lambda bh, n: (bh, 0, 0))
    chunk_shapes = [(chunk, key_dim)] * 3 + [(chunk, value_dim), (chunk, chunk), (chunk, 1)]
    return pl.pallas_call(
        _scan_kernel,
        grid=(heads, num_chunks),
        in_specs=[_chunk_spec(*shape) for shape in chunk_shapes] + [state_spec],
        out_specs=[_chunk_spec(chunk, value_dim), state_spec],
        out_shape=[
            jax.ShapeDtypeStruct((heads, num_chunks, chunk, value_dim), _F32),
            jax.ShapeDtypeStruct((heads, key_dim, value_dim), _F32),
        ],
        scratch_shapes=[pltpu.VMEM((key_dim, value_dim), _F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(q, k, w, u, gamma, decay_in, initial_state)


def _states_kernel(w_ref, u_ref, kt_ref, decay_ref, state0_ref, states_ref, v_new_ref, final_ref, state_ref) -> None:
    """One chunk of one (batch, head) of ``lax_state_scan``: records the entering state and v_new, then steps.

    Refs (blocks): w, kt [C, K]; u [C, V]; decay [1, 1]; state0 [K, V]; outputs states [K, V], v_new [C, V],
    final [K, V]; scratch state [K, V] float32 carried over the sequential chunk axis.
    """
    chunk = pl.program_id(1)

    @pl.when(chunk == 0)
    def _init() -> None:
        state_ref[...] = state0_ref[...]

    state = state_ref[...]
    states_ref[...] = state
    v_new = u_ref[...] - _dot(w_ref[...], state)
    v_new_ref[...] = v_new
    state_ref[...] = decay_ref[...] * state + _dot(kt_ref[...].T, v_new)

    @pl.when(chunk == pl.num_programs(1) - 1)
    def _write_final() -> None:
        final_ref[...] = state_ref[...]


def _states_bwd_kernel(
    w_ref,
    kt_ref,
    decay_ref,
    states_ref,
    v_new_ref,
    d_states_ref,
    d_v_new_ref,
    d_final_ref,
    du_ref,
    dw_ref,
    dkt_ref,
    d_decay_ref,
    d_initial_ref,
    grad_ref,
) -> None:
    """One chunk, visited last to first, of the reverse of ``_states_kernel``.

    The scratch grad [K, V] holds G, the cotangent of the state leaving the chunk (d_final at the start). With S
    the state entering the chunk: dv = d(v_new) + Kt G; dU = dv; dW = -dv S^T; dKt = v_new G^T;
    d(decay) = sum(S * G); the cotangent of S is d(states) + decay G - W^T dv, carried to the chunk before.
    """
    step = pl.program_id(1)

    @pl.when(step == 0)
    def _init() -> None:
        grad_ref[...] = d_final_ref[...]

    grad, state, w = grad_ref[...], states_ref[...], w_ref[...]
    dv = d_v_new_ref[...] + _dot(kt_ref[...], grad)
    du_ref[...] = dv
    dw_ref[...] = -_dot_nt(dv, state)
    dkt_ref[...] = _dot_nt(v_new_ref[...], grad)
    d_decay_ref[...] = jnp.sum(state * grad, keepdims=True)
    grad_ref[...] = d_states_ref[...] + decay_ref[...] * grad - _dot(w.T, dv)

    @pl.when(step == pl.num_programs(1) - 1)
    def _write_initial() -> None:
        d_initial_ref[...] = grad_ref[...]


def _heads_first(x: jax.Array) -> jax.Array:
    """[B, H, ...] -> [B * H, ...]."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _states_call(w, u, k_to_end, chunk_decay, initial_state, interpret) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``_states_kernel`` over all chunks; same contract as ``lax_state_scan`` (shapes in its docstring)."""
    batch, heads, num_chunks, chunk, key_dim = w.shape
    value_dim = u.shape[-1]
    state_spec = pl.BlockSpec((None, key_dim, value_dim), lambda bh, n: (bh, 0, 0))
    states, v_new, final = pl.pallas_call(
        _states_kernel,
        grid=(batch * heads, num_chunks),
        in_specs=[_chunk_spec(chunk, key_dim), _chunk_spec(chunk, value_dim), _chunk_spec(chunk, key_dim)]
        + [_chunk_spec(1, 1), state_spec],
        out_specs=[_chunk_spec(key_dim, value_dim), _chunk_spec(chunk, value_dim), state_spec],
        out_shape=[
            jax.ShapeDtypeStruct((batch * heads, num_chunks, key_dim, value_dim), _F32),
            jax.ShapeDtypeStruct((batch * heads, num_chunks, chunk, value_dim), _F32),
            jax.ShapeDtypeStruct((batch * heads, key_dim, value_dim), _F32),
        ],
        scratch_shapes=[pltpu.VMEM((key_dim, value_dim), _F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(
        _heads_first(w),
        _heads_first(u),
        _heads_first(k_to_end),
        _heads_first(chunk_decay)[..., None, None],
        _heads_first(initial_state),
    )
    split = lambda x: x.reshape(batch, heads, *x.shape[1:])  # noqa: E731
    return split(final), split(states), split(v_new)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _pallas_state_scan(w, u, k_to_end, chunk_decay, initial_state, interpret):
    """``lax_state_scan`` as Pallas TPU kernels, forward and reverse, with the state in VMEM."""
    return _states_call(w, u, k_to_end, chunk_decay, initial_state, interpret)


def _pallas_state_scan_fwd(w, u, k_to_end, chunk_decay, initial_state, interpret):
    final, states, v_new = _states_call(w, u, k_to_end, chunk_decay, initial_state, interpret)
    return (final, states, v_new), (w, k_to_end, chunk_decay, states, v_new)


def _pallas_state_scan_bwd(interpret, residuals, cotangents):
    """Runs ``_states_bwd_kernel`` from the last chunk to the first."""
    w, k_to_end, chunk_decay, states, v_new = residuals
    d_final, d_states, d_v_new = cotangents
    batch, heads, num_chunks, chunk, key_dim = w.shape
    value_dim = v_new.shape[-1]
    reverse = lambda rows, cols: pl.BlockSpec(  # noqa: E731
        (None, None, rows, cols), lambda bh, n: (bh, num_chunks - 1 - n, 0, 0)
    )
    state_spec = pl.BlockSpec((None, key_dim, value_dim), lambda bh, n: (bh, 0, 0))
    per_chunk = lambda *shape: jax.ShapeDtypeStruct((batch * heads, num_chunks, *shape), _F32)  # noqa: E731
    du, dw, dkt, d_decay, d_initial = pl.pallas_call(
        _states_bwd_kernel,
        grid=(batch * heads, num_chunks),
        in_specs=[reverse(chunk, key_dim), reverse(chunk, key_dim), reverse(1, 1), reverse(key_dim, value_dim)]
        + [reverse(chunk, value_dim), reverse(key_dim, value_dim), reverse(chunk, value_dim), state_spec],
        out_specs=[reverse(chunk, value_dim), reverse(chunk, key_dim), reverse(chunk, key_dim), reverse(1, 1)]
        + [state_spec],
        out_shape=[per_chunk(chunk, value_dim), per_chunk(chunk, key_dim), per_chunk(chunk, key_dim)]
        + [per_chunk(1, 1), jax.ShapeDtypeStruct((batch * heads, key_dim, value_dim), _F32)],
        scratch_shapes=[pltpu.VMEM((key_dim, value_dim), _F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(
        _heads_first(w),
        _heads_first(k_to_end),
        _heads_first(chunk_decay)[..., None, None],
        _heads_first(states),
        _heads_first(v_new),
        _heads_first(d_states),
        _heads_first(d_v_new),
        _heads_first(d_final),
    )
    split = lambda x: x.reshape(batch, heads, *x.shape[1:])  # noqa: E731
    return split(dw), split(du), split(dkt), split(d_decay)[..., 0, 0], split(d_initial)


_pallas_state_scan.defvjp(_pallas_state_scan_fwd, _pallas_state_scan_bwd)


def _pad_to_lanes(
    q: jax.Array, k: jax.Array, v: jax.Array, initial_state: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Zero-pads K and V to multiples of 128 (zero channels change nothing).

    Returns q, k [.., K'], v [.., V'] and the state [.., K', V'].
    """
    padded_k, padded_v = _round_up(q.shape[-1], _LANES), _round_up(v.shape[-1], _LANES)
    state = jnp.pad(initial_state, [(0, 0), (0, 0), (0, padded_k - q.shape[-1]), (0, padded_v - v.shape[-1])])
    return _pad_last(q, padded_k), _pad_last(k, padded_k), _pad_last(v, padded_v), state


def _forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float | jax.Array,
    chunk_size: int,
    interpret: bool | pltpu.InterpretParams,
) -> tuple[jax.Array, jax.Array]:
    """Pads K, V to multiples of 128 and T to a multiple of C, runs both kernels on chunks and slices back."""
    batch, length, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    q, k, v, state = _pad_to_lanes(scale * q, k, v, initial_state)
    padded_k, padded_v = state.shape[-2:]
    resets = jnp.broadcast_to(resets[:, :, None], g.shape).astype(_F32)
    chunks = (_to_chunks(x, chunk_size) for x in (q, k, v, g, beta, resets))
    q, k, v, g, beta, resets = (x.reshape(batch * heads, *x.shape[2:]) for x in chunks)
    prepared = _prep_call(k, v, g, beta, resets, interpret)
    o, final = _scan_call(q, k, prepared, state.reshape(batch * heads, padded_k, padded_v), interpret)
    o = _from_chunks(o.reshape(batch, heads, *o.shape[1:]), length)[..., :value_dim]
    return o, final.reshape(batch, heads, padded_k, padded_v)[..., :key_dim, :value_dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _gated_delta_rule(q, k, v, g, beta, initial_state, resets, scale, chunk_size, interpret):
    """``_forward``, differentiated by ``_gated_delta_rule_bwd``."""
    return _forward(q, k, v, g, beta, initial_state, resets, scale, chunk_size, interpret)


def _gated_delta_rule_fwd(q, k, v, g, beta, initial_state, resets, scale, chunk_size, interpret):
    """Runs the kernels and saves the inputs (the backward recomputes the rest)."""
    out = _forward(q, k, v, g, beta, initial_state, resets, scale, chunk_size, interpret)
    return out, (q, k, v, g, beta, initial_state, resets, scale)


def _padded_chunked(q, k, v, g, beta, initial_state, scale, resets, chunk_size, interpret):
    """The chunked form on K, V zero-padded to multiples of 128, with the Pallas state scan; sliced back."""
    key_dim, value_dim = q.shape[-1], v.shape[-1]
    q, k, v, state = _pad_to_lanes(q, k, v, initial_state)
    scan = functools.partial(_pallas_state_scan, interpret=interpret)
    o, final = chunked_gated_delta_rule(q, k, v, g, beta, state, resets, scale, chunk_size, state_scan=scan)
    return o[..., :value_dim], final[..., :key_dim, :value_dim]


def _gated_delta_rule_bwd(chunk_size, interpret, residuals, cotangents):
    """VJP of the chunked form whose sequential part is the Pallas state scan (forward and reverse kernels, the
    state in VMEM); its chunk-parallel part is differentiated by XLA. None for resets."""
    *floats, resets, scale = residuals
    reference = lambda *args: _padded_chunked(*args, resets, chunk_size, interpret)  # noqa: E731
    _, vjp = jax.vjp(reference, *floats, scale)
    *grads, d_scale = vjp(cotangents)
    return (*grads, None, d_scale)


_gated_delta_rule.defvjp(_gated_delta_rule_fwd, _gated_delta_rule_bwd)


def pallas_tpu_gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float | jax.Array,
    chunk_size: int,
    *,
    interpret: bool | pltpu.InterpretParams = False,
) -> tuple[jax.Array, jax.Array]:
    """Gated delta rule with the Pallas TPU kernels: a ``spec.GatedDeltaRule`` on float32 inputs with K, V up to
    MAX_HEAD_DIM and chunk_size in CHUNK_SIZES; o and the final state come back in float32.

    interpret: False to compile for the TPU; True or ``pltpu.InterpretParams()`` to run in the interpreter.

    Gradients (a ``jax.custom_vjp``): the VJP of ``chunked_gated_delta_rule`` with its sequential part run by the
    Pallas state-scan kernels (forward and reverse, the state in VMEM) and its chunk-parallel part differentiated by
    XLA; the forward kernels' outputs are not reused, only the inputs are saved.

    Raises:
      ValueError: K or V above MAX_HEAD_DIM, an input not in DTYPES or a chunk_size not in CHUNK_SIZES, before
        launch.
    """
    _check_inputs(q, v, (q, k, v, g, beta, initial_state), chunk_size)
    scale = jnp.asarray(scale, _F32)
    return _gated_delta_rule(q, k, v, g, beta, initial_state, resets, scale, chunk_size, interpret)


BACKEND = Backend(
    name="pallas_tpu",
    run=pallas_tpu_gated_delta_rule,
    platform="tpu",
    chunk_sizes=CHUNK_SIZES,
    max_head_dim=MAX_HEAD_DIM,
    dtypes=DTYPES,
)
