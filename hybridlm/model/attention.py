"""Causal self-attention with GQA, full-width QK-norm, optional RoPE, optional sliding window, document masking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
        q, k, v = self._project(x, positions)
        return self._output(self._kernel(q, k, v, segment_ids))

    def _project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, d_model] -> q [B, T, H, D] and k, v [B, T, H_kv, D], normed and rotated."""
        config = self.config
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x)).reshape(b, t, config.num_heads, config.head_dim)
        k = self.k_norm(self.k_proj(x)).reshape(b, t, config.num_kv_heads, config.head_dim)
        v = self.v_proj(x).reshape(b, t, config.num_kv_heads, config.head_dim)
        if config.use_rope:
            q, k = apply_rope(q, positions, config.rope_theta), apply_rope(k, positions, config.rope_theta)
        return q, k, v

    def _output(self, out: jax.Array) -> jax.Array:
        """out: [B, T, H, D] -> o_proj(out) [B, T, d_model]."""
        b, t, _, _ = out.shape
        return self.o_proj(out.reshape(b, t, self.config.num_heads * self.config.head_dim))

    def cache_length(self, max_len: int) -> int:
        """Slots of this layer's K/V cache for sequences of up to max_len tokens: the window when sliding."""
        return max_len if self.window is None else min(self.window, max_len)

    def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
        """An empty ring buffer: k, v [B, L, H_kv, D] in the compute dtype and the absolute position held in each
        slot, int32 [B, L] (-1: empty), L = cache_length(max_len). Position p lives in slot p % L."""
        config, length = self.config, self.cache_length(max_len)
        kv = jnp.zeros((batch, length, config.num_kv_heads, config.head_dim), config.compute_dtype)
        return {"k": kv, "v": kv, "positions": jnp.full((batch, length), -1, jnp.int32)}

    def prefill(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The forward of left-padded prompts that also fills the empty `cache`. x: [B, T, d_model]; positions: int
        [B, T] (-1 on padding, 0.. on each row's prompt, so the last column is each row's last token); segment_ids:
        int [B, T] keeping padding out of the prompts. Returns ([B, T, d_model], cache)."""
        q, k, v = self._project(x, positions)
        out = self._output(self._kernel(q, k, v, segment_ids))
        length = cache["positions"].shape[1]
        # A token goes to slot position % L when it is among the row's last L tokens; the slots are then distinct.
        kept = (positions >= 0) & (positions > positions[:, -1:] - length)
        slots = jnp.where(kept[..., None], positions[..., None] % length == jnp.arange(length), False)  # [B, T, L]
        place = lambda y: jnp.einsum("btl,bthd->blhd", slots.astype(y.dtype), y, precision=jax.lax.Precision.HIGHEST)
        held = jnp.where(jnp.any(slots, axis=1), jnp.sum(jnp.where(slots, positions[..., None], 0), axis=1), -1)
        return out, {"k": place(k).astype(cache["k"].dtype), "v": place(v).astype(cache["v"].dtype), "positions": held}

    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One new token per row. x: [B, 1, d_model]; positions: int [B, 1], its absolute position. Writes its
        k, v into the cache, attends over the cache and returns ([B, 1, d_model], cache)."""
        config = self.config
        q, k, v = self._project(x, positions)
        length = cache["positions"].shape[1]
        slot = (positions % length == jnp.arange(length))  # [B, L]
        cache = {
            "k": jnp.where(slot[..., None, None], k.astype(cache["k"].dtype), cache["k"]),
            "v": jnp.where(slot[..., None, None], v.astype(cache["v"].dtype), cache["v"]),
            "positions": jnp.where(slot, positions, cache["positions"]),
        }
        held = cache["positions"]  # the last L positions up to this one: exactly the window when sliding
        visible = (held >= 0) & (held <= positions)
        b, groups = x.shape[0], config.num_heads // config.num_kv_heads
        q = q.reshape(b, config.num_kv_heads, groups, config.head_dim).astype(jnp.float32)
        scores = jnp.einsum("bhgd,blhd->bhgl", q, cache["k"].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        scores = jnp.where(visible[:, None, None, :], scores * config.head_dim**-0.5, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhgl,blhd->bhgd", probs, cache["v"].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        return self._output(out.reshape(b, 1, config.num_heads, config.head_dim).astype(v.dtype)), cache

    def _kernel(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """The attention op on each device's rows and heads. q: [B, T, H, D]; k, v: [B, T, H_kv, D] -> [B, T, H, D]."""

        def attend(q: jax.Array, k: jax.Array, v: jax.Array, *segments: jax.Array) -> jax.Array:
            segment_ids = segments[0] if segments else None
            return attention(q, k, v, segment_ids=segment_ids, window=self.window, impl=self.config.attention_impl)

        heads, kv_heads = ("batch", None, "heads", None), ("batch", None, "kv_heads", None)
        args = (q, k, v) if segment_ids is None else (q, k, v, segment_ids)
        in_axes = (heads, kv_heads, kv_heads, ("batch", None))[: len(args)]
        return partitioning.shard_map(attend, in_axes, heads)(*args)
