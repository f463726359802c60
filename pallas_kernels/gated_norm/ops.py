"""Public gated RMSNorm entry point: input checks and implementation dispatch by platform."""

from __future__ import annotations

from typing import NoReturn

import jax
import jax.numpy as jnp

from pallas_kernels.gated_norm.gpu import pallas_gpu_gated_rms_norm, supports
from pallas_kernels.gated_norm.reference import xla_gated_rms_norm
from pallas_kernels.platform import Backend, impl_problem, resolve

# The implementations by impl name, in the order "auto" tries those of the current platform: run(x, gate, weight, eps)
# as the entry point checked it; supports(x_shape): the calls it takes (others fall back to XLA).
BACKENDS: dict[str, Backend] = {
    "xla": Backend(xla_gated_rms_norm),
    "pallas_gpu": Backend(pallas_gpu_gated_rms_norm, "gpu", supports),
}
_PORTABLE = "xla"  # what "auto" picks where the platform has no kernel, and what takes the shapes a kernel does not


def _fail(message: str) -> NoReturn:
    raise ValueError(f"gated_rms_norm: {message}")


def resolve_impl(impl: str, x_shape: tuple[int, ...]) -> str:
    """Maps "auto" to the backend of this platform (the Pallas kernels on GPUs, XLA elsewhere), and any impl to XLA
    for shapes its backend does not take."""
    return resolve(BACKENDS, impl, _PORTABLE, x_shape)


def gated_rms_norm(x: jax.Array, gate: jax.Array, weight: jax.Array, eps: float, *, impl: str = "auto") -> jax.Array:
    """weight * RMSNorm(x) * SiLU(gate) over the last axis (the GDN layer's output norm, per value head).

    Args:
      x, gate: [..., D], one floating dtype.
      weight: [D], a floating dtype.
      eps: added to the mean square of x.
      impl: "xla" (the CPU and TPU path and the oracle: ``reference.py``), "pallas_gpu" (forward and backward as
        one Pallas Triton kernel each: ``gpu.py``; shapes they do not take use "xla") or "auto" (the kernels on
        GPUs, else XLA).

    Returns:
      [..., D] in x's dtype.

    Raises:
      ValueError: on an unknown impl or one for another platform, or inconsistent shapes or dtypes, before any
        computation.
    """
    problem = impl_problem(impl, {name: backend.platform for name, backend in BACKENDS.items()})
    if problem:
        _fail(problem)
    if x.ndim < 1 or gate.shape != x.shape or weight.shape != x.shape[-1:]:
        _fail(f"x {x.shape}, gate {gate.shape} and weight {weight.shape}: expected x, gate [..., D] and weight [D]")
    if gate.dtype != x.dtype or not jnp.issubdtype(x.dtype, jnp.floating):
        _fail(f"x and gate must share one floating dtype; got {x.dtype} and {gate.dtype}")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        _fail(f"weight must be floating; got {weight.dtype}")
    return BACKENDS[resolve_impl(impl, x.shape)].run(x, gate, weight, eps)
