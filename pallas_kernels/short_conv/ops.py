"""Public short convolution entry point: input checks and implementation dispatch by platform."""

from __future__ import annotations

from typing import NoReturn

import jax
import jax.numpy as jnp

from pallas_kernels.platform import Backend, impl_problem, resolve
from pallas_kernels.short_conv.gpu import pallas_gpu_short_conv, supports
from pallas_kernels.short_conv.reference import xla_short_conv

# The implementations by impl name, in the order "auto" tries those of the current platform: run(x, weight, segment_ids,
# l2_head_dim) as the entry point checked it; supports(x_shape, taps, l2_head_dim): the calls it takes (others fall
# back to XLA).
BACKENDS: dict[str, Backend] = {
    "xla": Backend(xla_short_conv),
    "pallas_gpu": Backend(pallas_gpu_short_conv, "gpu", supports),
}
_PORTABLE = "xla"  # what "auto" picks where the platform has no kernel, and what takes the shapes a kernel does not


def _fail(message: str) -> NoReturn:
    raise ValueError(f"short_conv: {message}")


def resolve_impl(impl: str, x_shape: tuple[int, ...], taps: int, l2_head_dim: int | None = None) -> str:
    """Maps "auto" to the backend of this platform (the Pallas kernels on GPUs, XLA elsewhere), and any impl to XLA
    for shapes its backend does not take."""
    return resolve(BACKENDS, impl, _PORTABLE, x_shape, taps, l2_head_dim)


def short_conv(
    x: jax.Array,
    weight: jax.Array,
    segment_ids: jax.Array | None = None,
    *,
    l2_head_dim: int | None = None,
    impl: str = "auto",
) -> jax.Array:
    """SiLU of the depthwise causal convolution of x with K taps per channel, restarted at each document; optionally
    L2-normalised per head after (the GDN layer's queries and keys).

    Args:
      x: [B, T, C].
      weight: [K, C], the oldest tap first, x's dtype: out[t] = SiLU(sum over s < K of weight[K - 1 - s] * x[t - s]),
        where a tap before the sequence or in an earlier document reads 0.
      segment_ids: optional int [B, T]; a document is a run of equal ids along the row.
      l2_head_dim: when given, each run of l2_head_dim channels (a head; it divides C) of the SiLU's output, rounded
        to x's dtype, is divided by sqrt(its sum of squares + ``reference.L2_EPS``) in float32.
      impl: "xla" (shifted copies, autodiff's backward; the CPU and TPU path and the oracle), "pallas_gpu" (Pallas
        Triton kernels, one pass forward and two backward: ``gpu.py``; shapes they do not take use "xla") or "auto" (the kernels on GPUs, else XLA).

    Returns:
      [B, T, C] in x's dtype.

    Raises:
      ValueError: on an unknown impl or one for another platform, or inconsistent shapes or dtypes, before any
        computation.
    """
    problem = impl_problem(impl, {name: backend.platform for name, backend in BACKENDS.items()})
    if problem:
        _fail(problem)
    if x.ndim != 3:
        _fail(f"x has shape {x.shape}; expected x [B, T, C]")
    if weight.ndim != 2 or weight.shape[1] != x.shape[2] or weight.shape[0] < 1:
        _fail(f"weight has shape {weight.shape} but x is {x.shape}; expected weight [K, C] with C = {x.shape[2]}")
    if weight.dtype != x.dtype or not jnp.issubdtype(x.dtype, jnp.floating):
        _fail(f"x and weight must share one floating dtype; got {x.dtype} and {weight.dtype}")
    if segment_ids is not None and (
        segment_ids.shape != x.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer)
    ):
        _fail(
            f"segment_ids has shape {segment_ids.shape} and dtype {segment_ids.dtype}; expected int [B, T] = "
            f"{list(x.shape[:2])}"
        )
    if l2_head_dim is not None and (l2_head_dim < 1 or x.shape[2] % l2_head_dim):
        _fail(f"l2_head_dim={l2_head_dim} does not divide the channels of x {x.shape}; expected a head size dividing C")
    backend = BACKENDS[resolve_impl(impl, x.shape, weight.shape[0], l2_head_dim)]
    return backend.run(x, weight, segment_ids, l2_head_dim)
