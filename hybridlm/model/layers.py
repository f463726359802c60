"""Building blocks shared by the attention and Gated DeltaNet blocks: linear maps, RMSNorm, SwiGLU, RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hybridlm.model.config import ModelConfig


def logical(init: nnx.Initializer, axes: tuple[str | None, ...]) -> nnx.Initializer:
    """`init` whose parameter carries the logical names of its axes (hybridlm.partitioning places them on a mesh)."""
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def truncated_normal(config: ModelConfig) -> nnx.Initializer:
    """N(0, init_std^2) cut at 3 standard deviations."""
    return nnx.initializers.truncated_normal(config.init_std, lower=-3.0, upper=3.0)


def linear(
    config: ModelConfig, in_features: int, out_features: int, axes: tuple[str, str], rngs: nnx.Rngs
) -> nnx.Linear:
    """A bias-free projection [..., in] -> [..., out]; weights [in, out] in `param_dtype` with logical axes `axes`,
    matmul in `dtype`."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=False,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=logical(truncated_normal(config), axes),
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """x / rms(x) * weight over the last axis, computed in float32; output in the input's dtype. The weight's one
    axis has the logical name `axis`."""

    def __init__(self, width: int, eps: float, param_dtype: jnp.dtype, axis: str = "norm"):
        self.weight = nnx.Param(jnp.ones((width,), param_dtype), out_sharding=(axis,), eager_sharding=False)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., width] -> [..., width]."""
        with jax.named_scope("norm"):
            return (self.weight[...].astype(jnp.float32) * normalize_rms(x, self.eps)).astype(x.dtype)


def normalize_rms(x: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)): [..., d_model] -> [..., d_model]."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.gate_proj = linear(config, config.d_model, config.mlp_hidden, ("embed", "mlp"), rngs)
        self.up_proj = linear(config, config.d_model, config.mlp_hidden, ("embed", "mlp"), rngs)
        self.down_proj = linear(config, config.mlp_hidden, config.d_model, ("mlp", "embed"), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., d_model] -> [..., d_model]."""
        with jax.named_scope("mlp"):
            return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, half-split layout (dims i and i + D/2 rotate together).

    x: [B, T, H, D]; positions: int [B, T]. Angles and the rotation are computed in float32.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, T, 1, D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
