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

    @jax.named_scope("attention")
    def prefill(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The forward of left-padded prompts that also fills the empty `cache`. x: [B, T, d_model]; positions: int
        [B, T] (-1 on the padding, then 0, 1, .. on each row's prompt, so the last column is each row's last token);
        segment_ids: int [B, T] keeping padding out of the prompts. Returns ([B, T, d_model], cache)."""
        q, k, v = self._project(x, positions)
        out = self._output(self._kernel(q, k, v, segment_ids))
        columns, held = _prefill_slots(positions, cache["positions"].shape[1])
        place = lambda y, empty: jnp.where(
            held[..., None, None] >= 0, jnp.take_along_axis(y, columns[..., None, None], axis=1), 0
        ).astype(empty.dtype)
        return out, {"k": place(k, cache["k"]), "v": place(v, cache["v"]), "positions": held}

    @jax.named_scope("attention")
    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One new token per row. x: [B, 1, d_model]; positions: int [B, 1], its absolute position. Writes its
        k, v into the cache, attends over the cache and returns ([B, 1, d_model], cache)."""
        config = self.config
        q, k, v = self._project(x, positions)
        b, length = x.shape[0], cache["positions"].shape[1]
        rows, slots = jnp.arange(b), positions[:, 0] % length  # position p lives in slot p % L
        write = lambda y, old: old.at[rows, slots].set(y[:, 0].astype(old.dtype), unique_indices=True)
        cache = {
            "k": write(k, cache["k"]),
            "v": write(v, cache["v"]),
            "positions": cache["positions"].at[rows, slots].set(positions[:, 0], unique_indices=True),
        }
        held = cache["positions"]  # the last L positions up to this one: exactly the window when sliding
        visible = (held >= 0) & (held <= positions)
        # The cache is read in its own dtype (bf16 on a GPU: half the bytes of a float32 copy), products summed in
        # float32; float32 caches run at full precision (XLA's default on a GPU would round them to TF32).
        highest = jax.lax.Precision.HIGHEST if cache["k"].dtype == jnp.float32 else None
        dot = lambda spec, a, b: jnp.einsum(
            spec, a.astype(b.dtype), b, precision=highest, preferred_element_type=jnp.float32
        )
        q = q.reshape(b, config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim)
        scores = dot("bhgd,blhd->bhgl", q, cache["k"])
        scores = jnp.where(visible[:, None, None, :], scores * config.head_dim**-0.5, -jnp.inf)
        out = dot("bhgl,blhd->bhgd", jax.nn.softmax(scores, axis=-1), cache["v"])
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


def _prefill_slots(positions: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """Where left-padded prompts land in a ring buffer of `length` slots: position p in slot p % length, for the
    last `length` positions of each row. positions: int [B, T], -1 on the padding, then 0, 1, .., last. Returns
    (columns, held), int32 [B, length] each: the column of `positions` whose token fills each slot (any column where
    the slot stays empty) and the position the slot holds (-1: empty). O(B x length), whatever T."""
    t = positions.shape[1]
    last = positions[:, -1:]  # [B, 1]
    back = (last - jnp.arange(length)) % length  # slot s holds position last - back: the latest p with p % L == s
    held = jnp.where(back <= last, last - back, -1)
    return jnp.clip(t - 1 - back, 0, t - 1).astype(jnp.int32), held.astype(jnp.int32)
