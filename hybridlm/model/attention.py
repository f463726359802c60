"""Causal self-attention with GQA, full-width QK-norm, optional RoPE, optional sliding window, document masking."""

from __future__ import annotations

import jax
from flax import nnx

from hybridlm import partitioning
from hybridlm.model.config import ModelConfig
from hybridlm.model.layers import RMSNorm, apply_rope, linear
from pallas_kernels import attention


class Attention(nnx.Module):
    """Olmo 3 attention: q/k/v projections, RMSNorm over the whole q and k projections, RoPE, softmax, o_proj."""

    def __init__(self, config: ModelConfig, sliding: bool, rngs: nnx.Rngs):
        q_width, kv_width = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = linear(config, config.d_model, q_width, ("embed", "heads"), rngs)
        self.k_proj = linear(config, config.d_model, kv_width, ("embed", "kv_heads"), rngs)
        self.v_proj = linear(config, config.d_model, kv_width, ("embed", "kv_heads"), rngs)
        self.o_proj = linear(config, q_width, config.d_model, ("heads", "embed"), rngs)
        self.q_norm = RMSNorm(q_width, config.norm_eps, config.params_dtype, "heads")
        self.k_norm = RMSNorm(kv_width, config.norm_eps, config.params_dtype, "kv_heads")
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
        out = self._kernel(q, k, v, segment_ids)
        return self.o_proj(out.reshape(b, t, config.num_heads * config.head_dim))

    def _kernel(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """The attention op on each device's rows and heads. q: [B, T, H, D]; k, v: [B, T, H_kv, D] -> [B, T, H, D]."""

        def attend(q: jax.Array, k: jax.Array, v: jax.Array, *segments: jax.Array) -> jax.Array:
            segment_ids = segments[0] if segments else None
            return attention(q, k, v, segment_ids=segment_ids, window=self.window, impl=self.config.attention_impl)

        heads, kv_heads = ("batch", None, "heads", None), ("batch", None, "kv_heads", None)
        args = (q, k, v) if segment_ids is None else (q, k, v, segment_ids)
        in_axes = (heads, kv_heads, kv_heads, ("batch", None))[: len(args)]
        return partitioning.shard_map(attend, in_axes, heads)(*args)
