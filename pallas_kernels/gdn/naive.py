"""Naive gated delta rule: a ``lax.scan`` over time steps, the oracle for every faster version.

Per batch b and head h, with state S in R^{K x V}, for t = 1..T:

    S   = 0 if a new document starts at t
    S   = exp(g_t) * S
    v'  = beta_t * (v_t - S^T k_t)
    S   = S + k_t v'^T
    o_t = S^T (scale * q_t)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.gdn.spec import Backend

_HIGHEST = jax.lax.Precision.HIGHEST


def gated_delta_rule_step(
    state: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, scale: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One token of the recurrence (the decode step). state: [B, H, K, V]; q, k: [B, H, K]; v: [B, H, V];
    g, beta: [B, H], all in the accumulation dtype -> (state [B, H, K, V], o [B, H, V])."""
    state = state * jnp.exp(g)[..., None, None]
    predicted = jnp.einsum("bhk,bhkv->bhv", k, state, precision=_HIGHEST)
    correction = beta[..., None] * (v - predicted)
    state = state + k[..., :, None] * correction[..., None, :]
    return state, jnp.einsum("bhk,bhkv->bhv", scale * q, state, precision=_HIGHEST)


def _time_step(state: jax.Array, step: tuple[jax.Array, ...], scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Advances the state [B, H, K, V] by one token, zeroed first where a document starts; returns (state, o_t)."""
    q_t, k_t, v_t, g_t, beta_t, reset_t = step
    state = jnp.where(reset_t[:, None, None, None], 0.0, state)
    return gated_delta_rule_step(state, q_t, k_t, v_t, g_t, beta_t, scale)


@jax.jit
def naive_gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array,
    resets: jax.Array,
    scale: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Runs the recurrence token by token: ``spec.GatedDeltaRule`` without chunk_size (the scan has no chunks).

    Inputs in the accumulation dtype (float32 or float64); o and the final state come back in it.
    """
    steps = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta, resets))
    final_state, o = jax.lax.scan(lambda state, step: _time_step(state, step, scale), initial_state, steps)
    return jnp.moveaxis(o, 0, 1), final_state


def _run(*inputs: jax.Array | float | int) -> tuple[jax.Array, jax.Array]:
    """``naive_gated_delta_rule`` as a ``spec.GatedDeltaRule``: the last input, chunk_size, is not used."""
    return naive_gated_delta_rule(*inputs[:-1])


BACKEND = Backend(name="naive", run=_run)
