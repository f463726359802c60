"""Causal self-attention with GQA, full-width QK-norm, optional RoPE, optional sliding window, document masking."""

from __future__ import annotations

import jax
from flax import nnx

from hybridlm.model.config import ModelConfig
from hybridlm.model.layers import RMSNorm, apply_rope, linear
from pallas_kernels import attention


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

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """x: [B, T, d_model]; positions: int [B, T]; segment_ids: int [B, T] (tokens attend within their document)
        or None (the row is one sequence). Returns [B, T, d_model]."""
        with jax.named_scope("attention"):
            return self._attend(x, positions, segment_ids)

    def _attend(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        config = self.config
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x)).reshape(b, t, config.num_heads, config.head_dim)
        k = self.k_norm(self.k_proj(x)).reshape(b, t, config.num_kv_heads, config.head_dim)
        v = self.v_proj(x).reshape(b, t, config.num_kv_heads, config.head_dim)
        if config.use_rope:
            q, k = apply_rope(q, positions, config.rope_theta), apply_rope(k, positions, config.rope_theta)
        out = attention(q, k, v, segment_ids=segment_ids, window=self.window, impl=config.attention_impl)
        return self.o_proj(out.reshape(b, t, config.num_heads * config.head_dim))
