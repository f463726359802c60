"""Next-token cross-entropy with z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lm_loss(logits: jax.Array, targets: jax.Array, z_loss_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy plus `z_loss_weight * mean(logsumexp(logits)^2)`.

    logits: float [B, T, V]; targets: int [B, T]. Returns the scalar training loss and its parts
    ("ce", "z_loss"), all float32.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = jnp.mean(log_z - target_logit)
    z_loss = jnp.mean(jnp.square(log_z))
    return ce + z_loss_weight * z_loss, {"ce": ce, "z_loss": z_loss}
