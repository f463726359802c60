"""Chunked (WY / UT-transform) gated delta rule in plain jnp.

Tokens are split into chunks of C. Within a chunk, with i, j chunk positions, L_ij the sum of g over
positions (j, i], Gamma_ij = exp(L_ij) for j <= i in the same document (0 otherwise) and
D_i = exp(sum of g over [0, i]) while no document starts at or before i in the chunk (0 otherwise):

    A     = strictly_lower(diag(beta) (K K^T * Gamma))
    W     = (I + A)^-1 diag(beta * D) K ;   U = (I + A)^-1 diag(beta) V
    v_new = U - W S
    O     = scale * ((Q * D) S + (Q K^T * Gamma) v_new)
    S     = D_last S + (K * Gamma_last,:)^T v_new

Only the S recurrence runs sequentially (a ``lax.scan`` over chunks); the rest is chunk-parallel.
L is summed directly per pair rather than as a difference of cumulative sums, so large gates do not
cancel catastrophically, and every exponent is masked to -inf before ``exp``, so no positive
exponent and no inf - inf is ever formed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.gdn.spec import Backend

_HIGHEST = jax.lax.Precision.HIGHEST


def _to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
    """[B, T, H, ...] -> [B, H, N, C, ...], zero-padding T up to N * C."""
    num_chunks = -(-x.shape[1] // chunk_size)
    padding = [(0, 0), (0, num_chunks * chunk_size - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, padding)
    x = x.reshape(x.shape[0], num_chunks, chunk_size, *x.shape[2:])
    return jnp.moveaxis(x, 3, 1)


def _from_chunks(x: jax.Array, length: int) -> jax.Array:
    """[B, H, N, C, V] -> [B, length, H, V], dropping the padding."""
    x = jnp.moveaxis(x, 1, 3)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _decays(g: jax.Array, resets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked decay factors of each chunk.

    Args:
      g: [B, H, N, C] log decays.
      resets: bool [B, 1, N, C]; True where a document starts.

    Returns:
      gamma [B, H, N, C, C]: exp(sum of g over (j, i]) for j <= i in the same document, else 0.
      decay_in [B, H, N, C]: exp(sum of g over [0, i]) if no document starts in [0, i], else 0.
    """
    positions = jnp.arange(g.shape[-1])
    causal = positions[:, None] >= positions[None, :]
    strictly_lower = positions[:, None] > positions[None, :]
    document = jnp.cumsum(resets, axis=-1)
    same_document = causal & (document[..., :, None] == document[..., None, :])
    pair_log_decay = jnp.cumsum(jnp.where(strictly_lower, g[..., :, None], 0.0), axis=-2)
    gamma = jnp.exp(jnp.where(same_document, pair_log_decay, -jnp.inf))
    decay_in = jnp.exp(jnp.where(document == 0, jnp.cumsum(g, axis=-1), -jnp.inf))
    return gamma, decay_in


def _solve_unit_lower(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """X with (I + A) X = rhs, for strictly lower-triangular A [..., C, C] and rhs [..., C, D].

    Forward substitution, one row per step: x_i = rhs_i - sum_{j < i} A_ij x_j. Written in jnp rather
    than ``solve_triangular`` so the CPU backend runs no LAPACK call inside the model's scans.
    """

    def solve_row(i: jax.Array, x: jax.Array) -> jax.Array:
        row = jax.lax.dynamic_index_in_dim(a, i, axis=-2, keepdims=False)
        x_i = jax.lax.dynamic_index_in_dim(rhs, i, axis=-2, keepdims=False)
        x_i = x_i - jnp.einsum("...j,...jd->...d", row, x, precision=_HIGHEST)
        return jax.lax.dynamic_update_index_in_dim(x, x_i, i, axis=-2)

    return jax.lax.fori_loop(0, a.shape[-1], solve_row, jnp.zeros_like(rhs))


def _wy_factors(
    k: jax.Array, v: jax.Array, beta: jax.Array, gamma: jax.Array, decay_in: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """W [B, H, N, C, K] and U [B, H, N, C, V] of the UT transform."""
    positions = jnp.arange(k.shape[-2])
    strictly_lower = positions[:, None] > positions[None, :]
    kk = jnp.einsum("...ik,...jk->...ij", k, k, precision=_HIGHEST)
    a = jnp.where(strictly_lower, beta[..., :, None] * kk * gamma, 0.0)
    rhs = jnp.concatenate([(beta * decay_in)[..., None] * k, beta[..., None] * v], axis=-1)
    wu = _solve_unit_lower(a, rhs)
    return wu[..., : k.shape[-1]], wu[..., k.shape[-1] :]


StateScan = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def _state_step(state: jax.Array, chunk: tuple[jax.Array, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Carries the state [B, H, K, V] over one chunk.

    Returns the next state and (the state before the chunk, v_new [B, H, C, V]).
    """
    w, u, k_to_end, chunk_decay = chunk
    v_new = u - jnp.einsum("bhck,bhkv->bhcv", w, state, precision=_HIGHEST)
    next_state = chunk_decay[..., None, None] * state + jnp.einsum(
        "bhck,bhcv->bhkv", k_to_end, v_new, precision=_HIGHEST
    )
    return next_state, (state, v_new)


def lax_state_scan(
    w: jax.Array, u: jax.Array, k_to_end: jax.Array, chunk_decay: jax.Array, initial_state: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The sequential part of the chunked form, as a ``lax.scan`` over chunks.

    Args:
      w, k_to_end: [B, H, N, C, K]; u: [B, H, N, C, V]; chunk_decay: [B, H, N]; initial_state: [B, H, K, V].

    Returns:
      the final state [B, H, K, V], the state entering each chunk [B, H, N, K, V] and v_new [B, H, N, C, V].
    """
    chunks = (w, u, k_to_end, chunk_decay)
    final_state, (states, v_new) = jax.lax.scan(
        _state_step, initial_state, tuple(jnp.moveaxis(x, 2, 0) for x in chunks)
    )
    return final_state, jnp.moveaxis(states, 0, 2), jnp.moveaxis(v_new, 0, 2)


@functools.partial(jax.jit, static_argnames=("chunk_size", "state_scan"))
def chunked_gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float | jax.Array,
    chunk_size: int,
    state_scan: StateScan = lax_state_scan,
) -> tuple[jax.Array, jax.Array]:
    """Runs the chunked form: a ``spec.GatedDeltaRule`` for any chunk_size, T zero-padded to a multiple of it (a no-op
    on the state).

    Inputs in the accumulation dtype (float32 or float64); o and the final state come back in it.
    state_scan runs the sequential part; same contract as ``lax_state_scan`` (the TPU backward passes one made of
    Pallas kernels).
    """
    length = q.shape[1]
    q, k, v, g, beta = (_to_chunks(x, chunk_size) for x in (q, k, v, g, beta))
    resets = _to_chunks(resets[:, :, None], chunk_size)
    gamma, decay_in = _decays(g, resets)
    w, u = _wy_factors(k, v, beta, gamma, decay_in)
    final_state, states, v_new = state_scan(w, u, k * gamma[..., -1, :, None], decay_in[..., -1], initial_state)
    q_from_start = scale * q * decay_in[..., None]
    scores = scale * jnp.einsum("...ik,...jk->...ij", q, k, precision=_HIGHEST) * gamma
    o = jnp.einsum("...ck,...kv->...cv", q_from_start, states, precision=_HIGHEST)
    o = o + jnp.einsum("...ij,...jv->...iv", scores, v_new, precision=_HIGHEST)
    return _from_chunks(o, length), final_state


BACKEND = Backend(name="chunked", run=chunked_gated_delta_rule)
