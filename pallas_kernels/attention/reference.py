"""Causal attention on XLA's plain path: the CPU implementation and the oracle of the fused ones.

It forms the [B, heads, T, T] scores (and a boolean mask of that size), so it is for the CPU, tests and short
sequences; the GPU and TPU implementations never hold a T x T matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array | None, length: int, window: int | None) -> jax.Array:
    """Which keys each query may see: causal, within `window` (a query at i sees keys j with i - window < j <= i;
    every j <= i when None) and within its own document (equal segment ids; all one document when None).

    Returns bool [B, 1, T, T] (query axis before key axis), B = 1 when segment_ids is None.
    """
    query, key = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= query - key < window
    allowed = allowed[None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return allowed


def xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, window: int | None, scale: float
) -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, T, H_kv, D] -> [B, T, H, D], softmax in float32."""
    mask = attention_mask(segment_ids, q.shape[1], window)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
