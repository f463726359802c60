"""The short convolution as XLA ops: the sum of shifted copies of the input, which XLA fuses with what reads it. The
CPU and TPU path, the forward of every path, and the oracle of the kernels' backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def xla_short_conv(x: jax.Array, weight: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """SiLU(p), p[b, t] = sum over s < K of weight[K - 1 - s] * x[b, t - s], where a tap before the sequence or in an
    earlier document reads 0.

    Args:
      x: [B, T, C].
      weight: [K, C], the oldest tap first; x's dtype.
      segment_ids: int [B, T] (taps never reach into the previous document) or None.

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
    return jax.nn.silu(out)
