"""What every gated delta rule implementation takes and returns, and how each declares where it runs.

``GatedDeltaRule`` is the argument list of the implementations in naive.py, chunked.py, gpu.py and tpu.py, written
once; each implementation documents only what it adds or restricts. ``Backend`` is an implementation's entry in the
table ``ops.gated_delta_rule`` dispatches on: its name, the platform it needs and the limits it accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import numpy as np


class GatedDeltaRule(Protocol):
    """An implementation of the recurrence of naive.py, on inputs prepared by ``ops.gated_delta_rule``."""

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        g: jax.Array,
        beta: jax.Array,
        initial_state: jax.Array,
        resets: jax.Array,
        scale: float | jax.Array,
        chunk_size: int,
    ) -> tuple[jax.Array, jax.Array]:
        """Runs the gated delta rule.

        Args:
          q, k: [B, T, H, K], used as given (the caller L2-normalises them).
          v: [B, T, H, V].
          g: [B, T, H] log-space decay, <= 0.
          beta: [B, T, H] delta-rule step size in [0, 2].
          initial_state: [B, H, K, V], the state before the first token.
          resets: bool [B, T]; True where the state is zeroed before the token (a document starts).
          scale: multiplier applied to q.
          chunk_size: C, tokens per chunk of the chunked forms; any T is allowed.
          All floating inputs share one dtype, the accumulation dtype (float32 or float64), unless the backend
          declares narrower ones (``Backend.dtypes``, ``Backend.run_bfloat16``).

        Returns:
          o [B, T, H, V] in v's dtype and the final state [B, H, K, V] in the accumulation dtype (float32 for
          bfloat16 inputs).
        """
        ...


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation and the calls it accepts.

    name: the ``impl`` of ``ops.gated_delta_rule`` that selects it.
    run: the implementation.
    platform: the JAX platform it needs ("gpu", "tpu"), or None where it runs anywhere. ``impl="auto"`` picks the
      backend of the current platform where ``supports`` holds, else the portable "chunked".
    chunk_sizes: the chunk sizes it takes; None for any.
    max_head_dim: the largest K and V it takes; None for any.
    dtypes: the floating input dtypes it takes; None for float32 and float64.
    run_bfloat16: where set, the variant ``ops.gated_delta_rule`` calls when q, k or v is bfloat16, with bfloat16
      q, k, v and float32 g, beta and initial state (else bfloat16 inputs are cast to float32 for ``run``).
    """

    name: str
    run: GatedDeltaRule
    platform: str | None = None
    chunk_sizes: tuple[int, ...] | None = None
    max_head_dim: int | None = None
    dtypes: tuple[np.dtype, ...] | None = None
    run_bfloat16: GatedDeltaRule | None = None

    def supports(self, key_dim: int, value_dim: int, chunk_size: int, dtype: np.dtype) -> bool:
        """Whether a call with head dims K, V, this chunk size and accumulation dtype is within the limits."""
        return (
            (self.max_head_dim is None or max(key_dim, value_dim) <= self.max_head_dim)
            and (self.chunk_sizes is None or chunk_size in self.chunk_sizes)
            and (self.dtypes is None or np.dtype(dtype) in self.dtypes)
        )
