"""The next token from a model's logits: greedy, or sampled with a temperature, top-k and top-p (nucleus) filters."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


class SamplingError(ValueError):
    """A sampling setting that cannot work; the message names the setting and the fix."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick each next token.

    temperature: 0 picks the most likely token (greedy); above 0 samples from softmax(logits / temperature).
    top_k: sample only among the k most likely tokens (0: no limit).
    top_p: sample only among the most likely tokens whose probabilities (after the temperature) first reach p
      (1: no limit); the most likely token always stays.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SamplingError(f"temperature={self.temperature} must be finite and >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise SamplingError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_tokens(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """logits: [B, V] (any float dtype); key: a PRNG key -> int32 [B], one token per row."""
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if sampling.top_p < 1:
        logits = _nucleus(logits, sampling.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _nucleus(logits: jax.Array, top_p: float) -> jax.Array:
    """logits [B, V] with -inf on every token outside the smallest set of most likely tokens whose probabilities sum
    to at least top_p (ties at the boundary stay)."""
    descending = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens strictly more likely than each
    kept = mass_before < top_p  # the first token has 0 before it, so it always stays
    threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)
