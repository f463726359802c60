"""Causal self-attention with GQA, full-width QK-norm, optional RoPE, optional sliding window, document masking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hybridlm.model.config import ModelConfig
from hybridlm.model.layers import RMSNorm, apply_rope, linear


def attention_mask(segment_ids: jax.Array, window: int | None) -> jax.Array:
    """Which keys each query may see.

    segment_ids: int [B, T] (tokens attend only within their own document). window: a query at i sees keys j with
    i - window < j <= i, or every j <= i when None. Returns bool [B, 1, T, T] (query axis before key axis).
    """
    t = segment_ids.shape[1]
    query, key = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= query - key < window
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (allowed[None] & same_doc)[:, None]


class Attention(nnx.Module):
    """Olmo 3 attention: q/k/v projections, RMSNorm over the whole q and k projections, RoPE, softmax, o_proj."""

    def __init__(self, config: ModelConfig, sliding: bool, rngs: nnx.Rngs):
        q_width, kv_width = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = linear(config, config.d_model, q_width, rngs)
        self.k_proj = linear(config, config.d_model, kv_width, rngs)
        self.v_proj = linear(config, config.d_model, kv_width, rngs)
        self.o_proj = linear(config, q_width, config.d_model, rngs)
        self.q_norm = RMSNorm(q_width, config.norm_eps, config.params_dtype)
        self.k_norm = RMSNorm(kv_width, config.norm_eps, config.params_dtype)
        self.config = config
        self.window = config.sliding_window if sliding else None

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x: [B, T, d_model]; positions, segment_ids: int [B, T]. Returns [B, T, d_model]."""
        config = self.config
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x)).reshape(b, t, config.num_heads, config.head_dim)
        k = self.k_norm(self.k_proj(x)).reshape(b, t, config.num_kv_heads, config.head_dim)
        v = self.v_proj(x).reshape(b, t, config.num_kv_heads, config.head_dim)
        if config.use_rope:
            q, k = apply_rope(q, positions, config.rope_theta), apply_rope(k, positions, config.rope_theta)
        out = jax.nn.dot_product_attention(q, k, v, mask=attention_mask(segment_ids, self.window))
        return self.o_proj(out.reshape(b, t, config.num_heads * config.head_dim))
