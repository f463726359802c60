"""The LM head and next-token cross-entropy with z-loss, computed a chunk of tokens at a time.

The float32 logits of a whole batch ([B, T, vocab], 3.3 GB per 8192-token sequence at the dolma2 vocabulary) are
never held: the forward scans over chunks of `chunk_tokens` tokens, and for each chunk forms its logits, the loss
terms and, under differentiation, the gradients of the hidden states and of the head's kernel (the cotangent of
the loss is a scalar, so they can be formed before it is known and scaled after). Memory for logits is bounded by
one chunk; the FLOPs are those of the plain head and loss (one matmul forward, two backward).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def head_logits(hidden: jax.Array, kernel: jax.Array) -> jax.Array:
    """hidden [..., d] (compute dtype) @ kernel [d, vocab] (cast to hidden's dtype) -> float32 logits [..., vocab],
    accumulated in float32."""
    return jnp.einsum("...d,dv->...v", hidden, kernel.astype(hidden.dtype), preferred_element_type=_F32)


def lm_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    z_loss_weight: float,
    chunk_tokens: int,
    loss_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy plus the z-loss `z_loss_weight * mean(logsumexp(logits)^2)` of logits = hidden @ kernel.

    hidden: [B, T, d] in the compute dtype; kernel: [d, vocab]; targets: int [B, T]; chunk_tokens: tokens per chunk
    (the last chunk is padded; padding counts nowhere); loss_mask: float [B, T] per-token weights (None: every token
    weighs 1), the means then being weighted means over the tokens (0 when every weight is 0). Returns the scalar
    training loss and, all float32, its parts "ce" and "z_loss" (the weighted term: loss = ce + z_loss) and
    "log_z_squared" (mean(logsumexp(logits)^2), unweighted by z_loss_weight). Only the training loss is
    differentiable; the parts are metrics.
    """
    with jax.named_scope("lm_head_loss"):
        return _lm_loss(hidden, kernel, targets, z_loss_weight, chunk_tokens, loss_mask)


def _lm_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    z_loss_weight: float,
    chunk_tokens: int,
    loss_mask: jax.Array | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    width = hidden.shape[-1]
    tokens = hidden.size // width
    chunk = min(chunk_tokens, tokens)
    chunks = -(-tokens // chunk)
    pad = chunks * chunk - tokens
    hidden = jnp.pad(hidden.reshape(tokens, width), ((0, pad), (0, 0))).reshape(chunks, chunk, width)
    targets = jnp.pad(targets.reshape(tokens), (0, pad)).reshape(chunks, chunk)
    if loss_mask is None:  # every real token counts once: the sums are divided by their number
        weights, divisor = (jnp.arange(targets.size) < tokens).reshape(targets.shape), tokens
    else:  # the weighted sums are divided by the total weight (by 1 when it is 0: the loss is then 0)
        mask = loss_mask.reshape(tokens).astype(_F32)
        weights, divisor = jnp.pad(mask, (0, pad)).reshape(chunks, chunk), jnp.sum(mask)
        divisor = jnp.where(divisor > 0, divisor, 1.0)
    loss, ce, log_z_squared = _chunked_loss(hidden, kernel, targets, weights, divisor, float(z_loss_weight))
    parts = {"ce": ce, "z_loss": z_loss_weight * log_z_squared, "log_z_squared": log_z_squared}
    return loss, {name: jax.lax.stop_gradient(value) for name, value in parts.items()}


def _weighed(values: jax.Array, weights: jax.Array) -> jax.Array:
    """values [C, ...] times their token's weight, weights [C]: bool (kept or zeroed) or float (scaled; zero where
    the weight is 0, whatever the value)."""
    weights = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    if weights.dtype == jnp.bool_:
        return jnp.where(weights, values, 0.0)
    return jnp.where(weights != 0, weights * values, 0.0)


def _chunk_terms(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, ...]:
    """One chunk: logits [C, vocab] float32, logsumexp [C], and the cross-entropy and logsumexp^2 summed over its
    tokens with `weights` [C] (`_weighed`)."""
    logits = head_logits(hidden, kernel)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    ce = jnp.sum(_weighed(log_z - target_logit, weights))
    z = jnp.sum(_weighed(jnp.square(log_z), weights))
    return logits, log_z, ce, z


def _means(
    ce_sum: jax.Array, z_sum: jax.Array, divisor: jax.Array | int, z_loss_weight: float
) -> tuple[jax.Array, ...]:
    ce, log_z_squared = ce_sum / divisor, z_sum / divisor
    return ce + z_loss_weight * log_z_squared, ce, log_z_squared


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    divisor: jax.Array | int,
    z_loss_weight: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """hidden [N, C, d], targets [N, C], token weights [N, C] (`_weighed`), divisor [] -> (loss, mean ce, mean
    logsumexp^2), the means being the weighted sums over `divisor`."""

    def step(sums: tuple[jax.Array, jax.Array], chunk: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], None]:
        _, _, ce, z = _chunk_terms(chunk[0], kernel, chunk[1], chunk[2])
        return (sums[0] + ce, sums[1] + z), None

    zero = jnp.zeros((), _F32)
    (ce_sum, z_sum), _ = jax.lax.scan(step, (zero, zero), (hidden, targets, weights))
    return _means(ce_sum, z_sum, divisor, z_loss_weight)


def _chunked_loss_fwd(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    divisor: jax.Array | int,
    z_loss_weight: float,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """The loss and, per chunk, d(loss)/d(hidden) [N, C, d] (hidden's dtype) and d(loss)/d(kernel) [d, vocab]
    (summed in float32), for a loss cotangent of 1."""

    def step(carry: tuple[jax.Array, ...], chunk: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], jax.Array]:
        ce_sum, z_sum, d_kernel = carry
        h, t, ok = chunk
        logits, log_z, ce, z = _chunk_terms(h, kernel, t, ok)
        probs = jnp.exp(logits - log_z[:, None])
        # d/dlogits of (ce_i + w * log_z_i^2) = softmax * (1 + 2 w log_z_i) - onehot(target_i); weighted mean.
        d_logits = probs * (1.0 + 2.0 * z_loss_weight * log_z)[:, None]
        d_logits = d_logits - jax.nn.one_hot(t, logits.shape[-1], dtype=_F32)
        d_logits = _weighed(d_logits / divisor, ok).astype(h.dtype)
        d_hidden = jnp.einsum("cv,dv->cd", d_logits, kernel.astype(h.dtype), preferred_element_type=_F32)
        d_kernel = d_kernel + jnp.einsum("cd,cv->dv", h, d_logits, preferred_element_type=_F32)
        return (ce_sum + ce, z_sum + z, d_kernel), d_hidden.astype(h.dtype)

    zero = jnp.zeros((), _F32)
    (ce_sum, z_sum, d_kernel), d_hidden = jax.lax.scan(
        step, (zero, zero, jnp.zeros(kernel.shape, _F32)), (hidden, targets, weights)
    )
    return _means(ce_sum, z_sum, divisor, z_loss_weight), (d_hidden, d_kernel.astype(kernel.dtype))


def _chunked_loss_bwd(
    z_loss_weight: float, residuals: tuple[jax.Array, ...], cotangents: tuple[jax.Array, ...]
) -> tuple[jax.Array | None, ...]:
    """Scales the forward's gradients by the loss's cotangent. The ce and logsumexp^2 outputs reach callers only
    through stop_gradient (see `lm_loss`), so their cotangents are zero; the token weights and their divisor get
    none (a mask is data)."""
    del z_loss_weight
    d_hidden, d_kernel = residuals
    d_loss = cotangents[0]
    return (
        (d_loss * d_hidden.astype(_F32)).astype(d_hidden.dtype),
        (d_loss * d_kernel.astype(_F32)).astype(d_kernel.dtype),
        None,
        None,
        None,
    )


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)
