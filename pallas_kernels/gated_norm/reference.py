"""The gated RMSNorm as XLA ops: the CPU and TPU path and the oracle of the GPU kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def xla_gated_rms_norm(x: jax.Array, gate: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """weight * RMSNorm(x) * SiLU(gate) over the last axis.

    Args:
      x, gate: [..., D], one dtype.
      weight: [D], any float dtype.
      eps: added to the mean square.

    Returns:
      [..., D] in x's dtype. The normalised x is rounded to x's dtype before the weight multiplies it; the rest is
      float32.
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    normed = weight.astype(jnp.float32) * normed.astype(x.dtype).astype(jnp.float32)
    return (normed * jax.nn.silu(gate.astype(jnp.float32))).astype(x.dtype)
