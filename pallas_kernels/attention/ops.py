"""Public causal attention entry point: input checks and implementation dispatch by platform."""

from __future__ import annotations

from typing import NoReturn

import jax
import jax.numpy as jnp

from pallas_kernels.attention.cudnn import cudnn_attention
from pallas_kernels.attention.gpu import pallas_gpu_attention
from pallas_kernels.attention.reference import xla_attention
from pallas_kernels.attention.tpu import pallas_tpu_attention
from pallas_kernels.platform import Backend, current_platform, impl_problem


def _cudnn_supports(dtype: jnp.dtype, head_dim: int, documents: bool) -> bool:
    """cuDNN's fused attention: float16 or bfloat16, head dim a multiple of 8 up to 256, no documents."""
    return jnp.dtype(dtype).name in ("float16", "bfloat16") and head_dim % 8 == 0 and head_dim <= 256 and not documents


# The implementations by impl name, in the order "auto" tries those of the current platform: run(q, k, v,
# segment_ids, window, scale) as `attention` checked it, returning O; supports(dtype, head_dim, documents): the calls
# "auto" may give it (an impl named explicitly is called whatever it says, and raises where it cannot apply a mask).
BACKENDS: dict[str, Backend] = {
    "xla": Backend(xla_attention),
    "cudnn": Backend(cudnn_attention, "gpu", _cudnn_supports),
    "pallas_gpu": Backend(pallas_gpu_attention, "gpu"),
    "pallas_tpu": Backend(pallas_tpu_attention, "tpu"),
}
_PORTABLE = "xla"  # what "auto" picks where the platform has no kernel


def _fail(message: str) -> NoReturn:
    raise ValueError(f"attention: {message}")


def resolve_impl(impl: str, dtype: jnp.dtype, head_dim: int, documents: bool) -> str:
    """Maps "auto" to the first backend of this platform that supports the call: on GPUs cuDNN where it applies,
    else the Pallas kernel; splash attention on TPUs; XLA elsewhere. Any other impl is returned as given."""
    if impl != "auto":
        return impl
    platform = current_platform()
    for name, backend in BACKENDS.items():
        if backend.platform == platform and backend.supports(dtype, head_dim, documents):
            return name
    return _PORTABLE


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    window: int | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> jax.Array:
    """Causal softmax attention with an optional sliding window and packed documents.

    Args:
      q: [B, T, H, D]; k, v: [B, T, H_kv, D] with H a multiple of H_kv (grouped-query attention: query head n uses kv
        head n // (H / H_kv)); one floating dtype.
      segment_ids: optional int [B, T]; tokens attend only within their document, a run of equal ids along the row.
      window: optional positive int; a query at i sees keys j with i - window < j <= i.
      scale: multiplier of q.k, a Python number; defaults to D ** -0.5.
      impl: "xla" (XLA's plain path: forms the [B, H, T, T] scores; the CPU path and the oracle), "cudnn" (cuDNN's
        fused attention; no documents), "pallas_gpu" (Pallas Triton flash attention), "pallas_tpu" (splash
        attention) or "auto" (see `resolve_impl`).

    Returns:
      [B, T, H, D] in q's dtype.

    Raises:
      ValueError: on an unknown impl or one for another platform, a mask it cannot apply, or inconsistent shapes
        or dtypes, before any computation.
    """
    problem = impl_problem(impl, {name: backend.platform for name, backend in BACKENDS.items()})
    if problem:
        _fail(problem)
    if q.ndim != 4:
        _fail(f"q has shape {q.shape}; expected q [B, T, H, D]")
    batch, length, heads, head_dim = q.shape
    for name, x in (("k", k), ("v", v)):
        if x.ndim != 4 or x.shape[:2] != (batch, length) or x.shape[3] != head_dim or x.shape[2] != k.shape[2]:
            _fail(
                f"{name} has shape {x.shape} but q is {q.shape}; expected [B, T, H_kv, D] = "
                f"[{batch}, {length}, H_kv, {head_dim}]"
            )
    if heads % k.shape[2]:
        _fail(f"q has {heads} heads, not a multiple of k's and v's {k.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        _fail(f"q, k and v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if segment_ids is not None and (
        segment_ids.shape != (batch, length) or not jnp.issubdtype(segment_ids.dtype, jnp.integer)
    ):
        _fail(
            f"segment_ids has shape {segment_ids.shape} and dtype {segment_ids.dtype}; expected int [B, T] = "
            f"[{batch}, {length}]"
        )
    if window is not None and (not isinstance(window, int) or window <= 0):
        _fail(f"window must be a positive int or None, got {window!r}")
    if isinstance(scale, jax.core.Tracer):
        _fail("scale must be a Python number, not a traced value")
    scale = head_dim**-0.5 if scale is None else float(scale)
    impl = resolve_impl(impl, q.dtype, head_dim, segment_ids is not None)
    return BACKENDS[impl].run(q, k, v, segment_ids, window, scale)
