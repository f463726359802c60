"""The Gated DeltaNet mixer: projections, short causal convolutions, gates, the gated delta rule, gated RMSNorm."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hybridlm import partitioning
from hybridlm.model.config import ModelConfig
from hybridlm.model.layers import linear, truncated_normal
from pallas_kernels import gated_delta_rule, gated_delta_rule_step, gated_rms_norm, short_conv
from pallas_kernels.short_conv import l2_normalize_heads

_A_RANGE = (0.0, 16.0)  # A ~ U(0, 16), stored as A_log = log(A)
_DT_RANGE = (1e-3, 1e-1)  # dt ~ exp(U(log 1e-3, log 1e-1)), floored, stored as dt_bias = softplus^-1(dt)
_DT_FLOOR = 1e-4


def _a_log_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    low, high = _A_RANGE
    a = jax.random.uniform(key, shape, jnp.float32, low, high)
    return jnp.log(a).astype(dtype)


def _dt_bias_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    log_low, log_high = math.log(_DT_RANGE[0]), math.log(_DT_RANGE[1])
    dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32, log_low, log_high))
    dt = jnp.maximum(dt, _DT_FLOOR)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse softplus


class CausalConv(nnx.Module):
    """Depthwise causal 1-D convolution (no bias) followed by SiLU, then, with l2_head_dim, the L2 norm of each head of
    that many channels: [B, T, C] -> [B, T, C]."""

    def __init__(self, config: ModelConfig, channels: int, heads_axis: str, l2_head_dim: int | None, rngs: nnx.Rngs):
        # N(0, init_std^2) cut at 3 std, as OLMo-core's src/scripts/official/OLMo-hybrid/OLMo-hybrid-7B-pretrain.py
        self.weight = nnx.Param(
            truncated_normal(config)(rngs.params(), (config.gdn.conv_kernel, channels), config.params_dtype),
            out_sharding=("conv_taps", heads_axis),
            eager_sharding=False,
        )
        self.dtype = config.compute_dtype
        self.impl = config.gdn.conv_impl
        self.heads_axis = heads_axis
        self.l2_head_dim = l2_head_dim

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """x: [B, T, C]; segment_ids: int [B, T] (taps never reach into the previous document) or None. Each device
        convolves its own rows and channels (the Pallas backward cannot be split by XLA)."""

        def convolve(x: jax.Array, weight: jax.Array, *segments: jax.Array) -> jax.Array:
            return short_conv(
                x, weight, segments[0] if segments else None, l2_head_dim=self.l2_head_dim, impl=self.impl
            )

        with jax.named_scope("gdn_conv"):
            args = (x.astype(self.dtype), self.weight[...].astype(self.dtype))
            args += () if segment_ids is None else (segment_ids,)
            rows = ("batch", None, self.heads_axis)
            in_axes = (rows, ("conv_taps", self.heads_axis), ("batch", None))[: len(args)]
            return partitioning.shard_map(convolve, in_axes, rows)(*args)

    @jax.named_scope("gdn_conv")
    def taps(self, x: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The decode state after a left-padded prompt. x: [B, T, C] (this conv's input); segment_ids: int [B, T]
        -> the last kernel - 1 inputs [B, kernel - 1, C] in the compute dtype, zero where not in the last document."""
        width = self.weight.shape[0] - 1
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (width, 0), (0, 0)))[:, -width:]
        segments = jnp.pad(segment_ids, ((0, 0), (width, 0)), constant_values=-1)[:, -width:]
        return jnp.where((segments == segment_ids[:, -1:])[..., None], x, 0)

    @jax.named_scope("gdn_conv")
    def step(self, x: jax.Array, taps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One token. x: [B, C]; taps: [B, kernel - 1, C], the previous inputs -> (output [B, C], taps)."""
        window = jnp.concatenate([taps, x.astype(self.dtype)[:, None]], axis=1)  # [B, kernel, C], oldest first
        weight = self.weight[...].astype(self.dtype)
        # A sum of products rather than a reduction over the taps: XLA's GPU reduction of [1, kernel, C] over its
        # middle axis took ~0.2 ms a call at batch 1 on an H200 (BENCHMARKS.md, 2026-12-02).
        out = window[:, -1] * weight[-1]
        for shift in range(1, window.shape[1]):
            out = out + window[:, -1 - shift] * weight[-1 - shift]
        out = jax.nn.silu(out)
        return out if self.l2_head_dim is None else l2_normalize_heads(out, self.l2_head_dim), window[:, 1:]


class GatedDeltaNet(nnx.Module):
    """Olmo Hybrid's Gated DeltaNet mixer: [B, T, d_model] -> [B, T, d_model].

    q, k, v = SiLU(causal_conv(proj(x))); q, k L2-normalised per head; beta = sigmoid(b_proj(x)) (x2 when negative
    eigenvalues are allowed); g = -exp(A_log) * softplus(a_proj(x) + dt_bias); o = gated_delta_rule(q, k, v, g, beta);
    out = o_proj(RMSNorm(o) * o_norm * SiLU(g_proj(x))) with the norm per value head.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        gdn = config.gdn
        key_width = gdn.num_key_heads * gdn.key_head_dim
        value_width = gdn.num_value_heads * gdn.value_head_dim
        keys, values = ("embed", "gdn_key_heads"), ("embed", "gdn_value_heads")
        self.q_proj = linear(config, config.d_model, key_width, keys, rngs)
        self.k_proj = linear(config, config.d_model, key_width, keys, rngs)
        self.v_proj = linear(config, config.d_model, value_width, values, rngs)
        self.a_proj = linear(config, config.d_model, gdn.num_value_heads, values, rngs)
        self.b_proj = linear(config, config.d_model, gdn.num_value_heads, values, rngs)
        self.g_proj = linear(config, config.d_model, value_width, values, rngs)
        self.o_proj = linear(config, value_width, config.d_model, ("gdn_value_heads", "embed"), rngs)
        self.q_conv = CausalConv(config, key_width, "gdn_key_heads", gdn.key_head_dim, rngs)
        self.k_conv = CausalConv(config, key_width, "gdn_key_heads", gdn.key_head_dim, rngs)
        self.v_conv = CausalConv(config, value_width, "gdn_value_heads", None, rngs)
        per_head = {"out_sharding": ("gdn_value_heads",), "eager_sharding": False}
        self.A_log = nnx.Param(_a_log_init(rngs.params(), (gdn.num_value_heads,), config.params_dtype), **per_head)
        self.dt_bias = nnx.Param(_dt_bias_init(rngs.params(), (gdn.num_value_heads,), config.params_dtype), **per_head)
        self.o_norm = nnx.Param(
            jnp.ones((gdn.value_head_dim,), config.params_dtype), out_sharding=("head_dim",), eager_sharding=False
        )
        self.config = config

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """x: [B, T, d_model]; positions: unused (GDN needs none); segment_ids: int [B, T] (the recurrent state restarts
        at each new document) or None."""
        del positions
        with jax.named_scope("gdn"):
            return self._mix(x, segment_ids)

    def _mix(self, x: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        q, k, v = self._project(x)
        return self._gated_rule(x, *self._convolve(x, q, k, v, segment_ids), segment_ids)[0]

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, d_model] -> the convolutions' inputs q, k [B, T, key_width], v [B, T, value_width]."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _convolve(
        self, x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The short convolutions over [B, T, width] inputs, as heads: q, k [B, T, H_k, K] (L2-normalised per head),
        v [B, T, H_v, V]."""
        return self._heads(x, self.q_conv(q, segment_ids), self.k_conv(k, segment_ids), self.v_conv(v, segment_ids))

    def _heads(self, x: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k [B, T, key_width], v [B, T, value_width] (T from x) -> q, k [B, T, H_k, K], v [B, T, H_v, V]."""
        gdn = self.config.gdn
        b, t, _ = x.shape
        q = q.reshape(b, t, gdn.num_key_heads, gdn.key_head_dim)
        k = k.reshape(b, t, gdn.num_key_heads, gdn.key_head_dim)
        return q, k, v.reshape(b, t, gdn.num_value_heads, gdn.value_head_dim)

    def _gated_rule(
        self,
        x: jax.Array,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        segment_ids: jax.Array | None,
        state: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The gates from x [B, T, d_model], the rule on the convolved q, k [B, T, H_k, K] (L2-normalised) and v
        [B, T, H_v, V] (the chunked form, or the one-token recurrence from `state` [B, H_v, K, V] when given, T = 1),
        and the gated output norm -> (out [B, T, d_model], final state float32 [B, H_v, K, V])."""
        gdn = self.config.gdn
        b, t, _ = x.shape
        heads_per_key = gdn.num_value_heads // gdn.num_key_heads
        q = jnp.repeat(q, heads_per_key, axis=2).astype(v.dtype)
        k = jnp.repeat(k, heads_per_key, axis=2).astype(v.dtype)
        beta = jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))
        if gdn.allow_neg_eigval:
            beta = 2.0 * beta
        a = self.a_proj(x).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a)
        with jax.named_scope("gdn_rule"):
            if state is None:
                o, state = self._rule(q, k, v, g, beta, segment_ids)
            else:
                q, k, v_t = (y[:, 0].astype(jnp.float32) for y in (q, k, v))
                state, o = gated_delta_rule_step(state, q, k, v_t, g[:, 0], beta[:, 0], gdn.key_head_dim**-0.5)
                o = o[:, None].astype(v.dtype)
        gate = self.g_proj(x).reshape(b, t, gdn.num_value_heads, gdn.value_head_dim)
        o = self._output_norm(o, gate.astype(o.dtype))
        return self.o_proj(o.reshape(b, t, gdn.num_value_heads * gdn.value_head_dim)), state

    def _output_norm(self, o: jax.Array, gate: jax.Array) -> jax.Array:
        """o_norm * RMSNorm(o) * SiLU(gate) per value head: o, gate [B, T, H_v, V] -> [B, T, H_v, V]. Each device
        normalises its own rows and heads (the Pallas kernels cannot be split by XLA)."""
        gdn = self.config.gdn

        def normalize(o: jax.Array, gate: jax.Array, weight: jax.Array) -> jax.Array:
            return gated_rms_norm(o, gate, weight, gdn.norm_eps, impl=gdn.norm_impl)

        heads = ("batch", None, "gdn_value_heads", None)
        return partitioning.shard_map(normalize, (heads, heads, ("head_dim",)), heads)(o, gate, self.o_norm[...])

    def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
        """The decode state: the recurrent state float32 [B, H_v, K, V] and each convolution's last kernel - 1
        inputs, q_taps, k_taps [B, kernel - 1, key_width] and v_taps [B, kernel - 1, value_width] (max_len unused)."""
        del max_len
        gdn, dtype = self.config.gdn, self.config.compute_dtype
        taps = lambda conv: jnp.zeros((batch, gdn.conv_kernel - 1, conv.weight.shape[1]), dtype)
        return {
            "state": jnp.zeros((batch, gdn.num_value_heads, gdn.key_head_dim, gdn.value_head_dim), jnp.float32),
            "q_taps": taps(self.q_conv),
            "k_taps": taps(self.k_conv),
            "v_taps": taps(self.v_conv),
        }

    @jax.named_scope("gdn")
    def prefill(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The forward of left-padded prompts (the prompt is each row's last document) that also returns the decode
        state. x: [B, T, d_model]; positions unused; segment_ids: int [B, T] -> ([B, T, d_model], cache)."""
        del positions
        q, k, v = self._project(x)
        out, state = self._gated_rule(x, *self._convolve(x, q, k, v, segment_ids), segment_ids)
        taps = {f"{n}_taps": getattr(self, f"{n}_conv").taps(y, segment_ids) for n, y in zip("qkv", (q, k, v))}
        return out, {"state": state.astype(cache["state"].dtype), **taps}

    @jax.named_scope("gdn")
    def decode(
        self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One new token per row from the cached state. x: [B, 1, d_model]; positions unused -> ([B, 1, d_model],
        cache)."""
        del positions
        new_cache, convolved = {}, []
        for name, y in zip("qkv", self._project(x)):
            y, new_cache[f"{name}_taps"] = getattr(self, f"{name}_conv").step(y[:, 0], cache[f"{name}_taps"])
            convolved.append(y[:, None])
        out, new_cache["state"] = self._gated_rule(x, *self._heads(x, *convolved), None, cache["state"])
        return out, new_cache

    def _rule(
        self, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, segment_ids: jax.Array | None
    ) -> list[jax.Array]:
        """The gated delta rule on each device's rows and value heads. q, k: [B, T, H_v, K]; v: [B, T, H_v, V];
        g, beta: [B, T, H_v]; segment_ids: int [B, T] or None -> (o [B, T, H_v, V], final state float32
        [B, H_v, K, V])."""
        gdn = self.config.gdn

        def rule(q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, *segments: jax.Array):
            segment_ids = segments[0] if segments else None
            o, state = gated_delta_rule(
                q, k, v, g, beta, segment_ids=segment_ids, chunk_size=gdn.chunk_size, impl=gdn.impl
            )
            return [o, state]  # a list: shard_map's out_axes read a tuple as one leaf

        heads, gates = ("batch", None, "gdn_value_heads", None), ("batch", None, "gdn_value_heads")
        args = (q, k, v, g, beta) if segment_ids is None else (q, k, v, g, beta, segment_ids)
        in_axes = (heads, heads, heads, gates, gates, ("batch", None))[: len(args)]
        state = ("batch", "gdn_value_heads", None, None)
        return partitioning.shard_map(rule, in_axes, [heads, state])(*args)
