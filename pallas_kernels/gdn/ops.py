"""Public gated delta rule entry point: input checks, dtype handling and implementation dispatch."""

from __future__ import annotations

import functools
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gdn import chunked, gpu, naive, tpu
from pallas_kernels.gdn.spec import Backend
from pallas_kernels.platform import current_platform, impl_problem

# The implementations by impl name, each with the platform and limits its module declares.
_BACKENDS: dict[str, Backend] = {b.name: b for b in (naive.BACKEND, chunked.BACKEND, gpu.BACKEND, tpu.BACKEND)}
_PORTABLE = "chunked"  # what "auto" picks where no backend of the platform supports the call


def resolve_impl(impl: str, key_dim: int, value_dim: int, chunk_size: int, dtype: np.dtype) -> str:
    """Maps "auto" to the backend of this platform where it supports the head dims, chunk size and accumulation
    dtype (float32; float64 for float64 inputs), else "chunked"; any other impl is returned as given."""
    if impl != "auto":
        return impl
    platform = current_platform()
    for backend in _BACKENDS.values():
        if backend.platform == platform and backend.supports(key_dim, value_dim, chunk_size, dtype):
            return backend.name
    return _PORTABLE


def _fail(message: str) -> NoReturn:
    raise ValueError(f"gated_delta_rule: {message}")


def _check_options(impl: str, chunk_size: Any) -> None:
    problem = impl_problem(impl, {name: backend.platform for name, backend in _BACKENDS.items()})
    if problem:
        _fail(problem)
    is_int = isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool)
    if not is_int or chunk_size <= 0:
        _fail(f"chunk_size must be a positive int, got {chunk_size!r}")


def _check_shapes(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    initial_state: jax.Array | None,
    segment_ids: jax.Array | None,
) -> None:
    if len(q.shape) != 4:
        _fail(f"q has shape {q.shape}; expected q [B, T, H, K]")
    batch, length, heads, key_dim = q.shape
    if k.shape != q.shape:
        _fail(f"k has shape {k.shape} but q is {q.shape}; expected k [B, T, H, K] = {q.shape}")
    if len(v.shape) != 4 or v.shape[:3] != q.shape[:3]:
        _fail(
            f"v has shape {v.shape} but q is {q.shape}; expected v [B, T, H, V] with "
            f"B, T, H = {batch}, {length}, {heads}"
        )
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (batch, length, heads):
            _fail(f"{name} has shape {x.shape} but q is {q.shape}; " f"expected {name} [B, T, H] = {q.shape[:3]}")
    state_shape = (batch, heads, key_dim, v.shape[3])
    if initial_state is not None and initial_state.shape != state_shape:
        _fail(
            f"initial_state has shape {initial_state.shape} but q is {q.shape} and v is {v.shape}; "
            f"expected initial_state [B, H, K, V] = {state_shape}"
        )
    if segment_ids is not None and segment_ids.shape != (batch, length):
        _fail(
            f"segment_ids has shape {segment_ids.shape} but q is {q.shape}; "
            f"expected segment_ids [B, T] = {(batch, length)}"
        )


def _check_dtypes(named: dict[str, jax.Array | None], segment_ids: jax.Array | None) -> None:
    for name, x in named.items():
        if x is not None and not jnp.issubdtype(x.dtype, jnp.floating):
            _fail(f"{name} has dtype {x.dtype}; expected a floating dtype")
    if segment_ids is not None and not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        _fail(f"segment_ids has dtype {segment_ids.dtype}; expected an integer dtype")


def _accumulation_dtype(arrays: list[jax.Array]) -> np.dtype:
    """float64 if any input is float64 (and x64 is enabled), else float32."""
    dtype = functools.reduce(jnp.promote_types, (x.dtype for x in arrays), jnp.float32)
    return jax.dtypes.canonicalize_dtype(dtype)


def _reset_flags(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
    """bool [B, T]: True at t > 0 where segment_ids[t] != segment_ids[t - 1]."""
    if segment_ids is None:
        return jnp.zeros((batch, length), bool)
    segment_ids = jnp.asarray(segment_ids)
    first = jnp.zeros((batch, min(length, 1)), bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    *,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """Gated delta rule (Gated DeltaNet token mixer); see naive.py for the recurrence.

    Args:
      q, k: [B, T, H, K], used as given (the caller L2-normalises them).
      v: [B, T, H, V].
      g: [B, T, H] log-space decay, <= 0.
      beta: [B, T, H] delta-rule step size in [0, 2].
      scale: multiplier applied to q; defaults to K ** -0.5.
      initial_state: optional [B, H, K, V] state before the first token (zeros if None); it
        applies to the tokens before the first document change.
      segment_ids: optional int [B, T]; a document starts (the state is reset to zero) before
        every t > 0 with segment_ids[t] != segment_ids[t - 1].
      chunk_size: tokens per chunk for chunked implementations; any T is allowed.
      impl: "naive" (time-step scan), "chunked" (WY/UT chunked form in jnp), "pallas_gpu" (the Pallas GPU
        kernels of gpu.py, forward and backward; float32-accurate matmuls for float32 inputs, bfloat16 operands
        with float32 accumulation when q, k or v is bfloat16; GPU only), "pallas_tpu" (the Pallas Mosaic kernels
        of tpu.py on float32: the forward, and in the backward the sequential state scan inside the chunked
        form's VJP; TPU only) or "auto" (the platform's Pallas kernel on GPU and TPU where the limits its module
        declares allow: K, V <= 256, chunk_size 16, 32 or 64, not float64; "chunked" otherwise).

    Returns:
      o: [B, T, H, V] in v's dtype.
      final_state: [B, H, K, V] after the last token, float32 (float64 for float64 inputs).

    Raises:
      ValueError: on an unknown impl, a non-positive chunk_size, or inconsistent shapes or dtypes,
        before any computation.
    """
    _check_options(impl, chunk_size)
    _check_shapes(q, k, v, g, beta, initial_state, segment_ids)
    floating = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state}
    _check_dtypes(floating, segment_ids)

    batch, length, heads, key_dim = q.shape
    dtype = _accumulation_dtype([x for x in floating.values() if x is not None])
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_dim, v.shape[3]), dtype)
    resets = _reset_flags(segment_ids, batch, length)
    scale = key_dim**-0.5 if scale is None else scale
    backend = _BACKENDS[resolve_impl(impl, key_dim, v.shape[3], int(chunk_size), dtype)]
    if backend.run_bfloat16 is not None and jnp.bfloat16 in (q.dtype, k.dtype, v.dtype):
        # bfloat16 activations stay bfloat16 in and out of the backend's bfloat16 variant (for the GPU kernels:
        # bfloat16 matmul operands with float32 accumulation; state, gates and inverse in float32).
        q, k, v_in = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
        g, beta, initial_state = (jnp.asarray(x, jnp.float32) for x in (g, beta, initial_state))
        return backend.run_bfloat16(q, k, v_in, g, beta, initial_state, resets, scale, int(chunk_size))
    q, k, v_acc, g, beta, initial_state = (jnp.asarray(x, dtype) for x in (q, k, v, g, beta, initial_state))
    o, final_state = backend.run(q, k, v_acc, g, beta, initial_state, resets, scale, int(chunk_size))
    return o.astype(v.dtype), final_state
