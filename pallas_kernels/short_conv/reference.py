"""The short convolution as XLA ops: the sum of shifted copies of the input, which XLA fuses with what reads it, and
the optional L2 norm per head after it. The CPU and TPU path, the forward of every path, and the oracle of the
kernels' backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp

L2_EPS = 1e-6  # under the square root of the L2 norm per head


def l2_normalize_heads(y: jax.Array, head_dim: int) -> jax.Array:
    """y: [..., C], C a multiple of head_dim -> each run of head_dim channels divided by sqrt(sum of squares + L2_EPS),
    computed in float32, in y's dtype."""
    heads = y.astype(jnp.float32).reshape(*y.shape[:-1], -1, head_dim)
    heads = heads * jax.lax.rsqrt(jnp.sum(jnp.square(heads), axis=-1, keepdims=True) + L2_EPS)
    return heads.reshape(y.shape).astype(y.dtype)


def xla_short_conv(
    x: jax.Array, weight: jax.Array, segment_ids: jax.Array | None, l2_head_dim: int | None = None
) -> jax.Array:
    """SiLU(p), p[b, t] = sum over s < K of weight[K - 1 - s] * x[b, t - s], where a tap before the sequence or in an
    earlier document reads 0; then, with l2_head_dim, ``l2_normalize_heads`` of that (rounded to x's dtype first).

    Args:
      x: [B, T, C].
      weight: [K, C], the oldest tap first; x's dtype.
      segment_ids: int [B, T] (taps never reach into the previous document) or None.
      l2_head_dim: the channels per head of the L2 norm (dividing C), or None for no norm.

    Returns:
      [B, T, C] in x's dtype.
    """
    taps = weight.shape[0]
    out = x * weight[-1]
    for shift in range(1, taps):
        shifted = jnp.pad(x, ((0, 0), (shift, 0), (0, 0)))[:, :-shift]
        if segment_ids is not None:
            same_doc = jnp.pad(segment_ids, ((0, 0), (shift, 0)), constant_values=-1)[:, :-shift] == segment_ids
            shifted = jnp.where(same_doc[..., None], shifted, 0)
        out = out + shifted * weight[-1 - shift]
    out = jax.nn.silu(out)
    return out if l2_head_dim is None else l2_normalize_heads(out, l2_head_dim)
