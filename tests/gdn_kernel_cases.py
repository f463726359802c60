"""Inputs and helpers shared by the Pallas GDN kernel tests (GPU and TPU kernels, in interpret mode and on a GPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gdn.naive import naive_gated_delta_rule

GRAD_NAMES = ("q", "k", "v", "g", "beta", "initial_state")
CHECKED_NAMES = ("o", "final_state", *(f"d{name}" for name in GRAD_NAMES))
# Relative error bounds against the float64 recurrence, by the dtype of q, k, v (and of the GPU kernels' matmuls).
BOUNDS = {np.dtype(jnp.float32): 1e-5, np.dtype(jnp.bfloat16): 2e-2}


class Case(NamedTuple):
    """A kernel check: inputs of ``random_inputs(seed, shape, regime)`` with q, k, v in ``dtype``, run at ``chunk``;
    ``block_v`` is the GPU scans' value tile (None: the kernel's default)."""

    shape: tuple[int, int, int, int, int]
    chunk: int
    regime: str = "mixed"
    dtype: Any = jnp.float32
    block_v: int | None = None


def rel(a: jax.Array, b: jax.Array) -> float:
    """||a - b|| / ||b||, computed in float64 numpy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_inputs(seed: int, shape: tuple[int, int, int, int, int], regime: str) -> dict[str, jax.Array]:
    """q, k (L2-normalised) [B, T, H, K], v [B, T, H, V], g, beta [B, T, H], initial_state, resets [B, T].

    regime "mixed": gates near 0, in [-20, 0] and some -1e4; "extreme": near 0 with -1e4 every few tokens; resets
    fall at random, exactly at chunk boundaries (16, 32, 64) and as a one-token document. "long": gates in
    [-0.05, 0] and one reset, at 3T/4, so the state and the pairs reach across whole chunks of 64 before it (in the
    other regimes a document or a large gate cuts every chunk short).
    """
    batch, length, heads, key_dim, value_dim = shape
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    u = rng.uniform(size=(3, batch, length, heads))
    near_zero = -1e-3 * u[0]
    resets = rng.uniform(size=(batch, length)) < 0.06
    resets[:, 0] = False
    resets[0, [c for c in (16, 32, 64) if c < length]] = True
    resets[-1, 1] = True
    if regime == "mixed":
        g = np.where(u[2] < 0.45, near_zero, np.where(u[2] < 0.93, -20.0 * u[1], -1e4))
    elif regime == "extreme":
        g = np.where(u[2] < 0.85, near_zero, -1e4)
    elif regime == "long":
        g = -0.05 * u[1]
        resets = np.zeros_like(resets)
        resets[:, 3 * length // 4] = True
    else:
        raise ValueError(f"unknown regime {regime!r}")
    x = dict(
        q=unit(rng.normal(size=(batch, length, heads, key_dim))),
        k=unit(rng.normal(size=(batch, length, heads, key_dim))),
        v=rng.normal(size=(batch, length, heads, value_dim)),
        g=g,
        beta=rng.uniform(0.0, 2.0, size=(batch, length, heads)),
        initial_state=rng.normal(size=(batch, heads, key_dim, value_dim)),
    )
    x = {name: jnp.asarray(value, jnp.float32) for name, value in x.items()}
    return {**x, "resets": jnp.asarray(resets)}


def naive(x: dict[str, jax.Array]) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the naive recurrence, with x's resets."""
    scale = x["q"].shape[-1] ** -0.5
    return lambda *args: naive_gated_delta_rule(*args, x["resets"], scale)


def differentiable_args(x: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
    return tuple(x[name] for name in GRAD_NAMES)


def with_dtype(x: dict[str, jax.Array], dtype: Any) -> dict[str, jax.Array]:
    """x with q, k and v cast to dtype (g, beta and the state stay float32, as the model passes them)."""
    return {name: value.astype(dtype) if name in ("q", "k", "v") else value for name, value in x.items()}


def _outputs_and_gradients(
    fn: Callable, args: tuple[jax.Array, ...], probes: tuple[jax.Array, jax.Array]
) -> list[np.ndarray]:
    """[o, final, and the gradients of <o, probes[0]> + <final, probes[1]> with respect to args], float64 numpy."""

    def run(args: tuple[jax.Array, ...], probes: tuple[jax.Array, jax.Array]) -> tuple:
        outputs, pullback = jax.vjp(fn, *args)
        return (*outputs, *pullback(probes))

    return [np.asarray(a, np.float64) for a in jax.jit(run)(args, probes)]


def check_against_naive(fn: Callable, x: dict[str, jax.Array], bound: float, seed: int) -> None:
    """fn(q, k, v, g, beta, initial_state) -> (o, final): its outputs and all six gradients (against random probes
    drawn from ``seed``, in the outputs' dtypes) are finite and within ``bound`` relative error of the naive
    recurrence run in float64 on the same input values, resets and probes."""
    args = differentiable_args(x)
    rng = np.random.default_rng(seed)
    probes = tuple(jnp.asarray(rng.normal(size=o.shape), o.dtype) for o in jax.eval_shape(fn, *args))
    results = _outputs_and_gradients(fn, args, probes)
    scale = x["q"].shape[-1] ** -0.5
    with jax.enable_x64(True):
        as_float64 = lambda arrays: tuple(jnp.asarray(np.asarray(a, np.float64)) for a in arrays)  # noqa: E731
        oracle = lambda *a: naive_gated_delta_rule(*a, x["resets"], scale)  # noqa: E731
        references = _outputs_and_gradients(oracle, as_float64(args), as_float64(probes))
    for name, result, reference in zip(CHECKED_NAMES, results, references, strict=True):
        assert np.all(np.isfinite(result)), name
        assert np.linalg.norm(reference) > 0, name
        assert rel(result, reference) < bound, (name, rel(result, reference))


def lowered_modules(fn: Callable, x: dict[str, jax.Array], platform: str) -> tuple[str, str]:
    """The StableHLO text of fn(q, k, v, g, beta, initial_state) -> (o, final) and of a loss on it with its gradient
    (as a training step computes both, so no part of the forward is dropped), lowered for
    ``platform`` ("cuda" or "tpu") on this machine: the Pallas kernels lower to Triton / Mosaic here, without
    the accelerator (its compiler runs only on the device)."""
    from jax import export

    def loss(*args):
        o, final = fn(*args)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final)

    # The Triton call has no serialization guarantee; only its lowering is inspected here.
    unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    args = differentiable_args(x)
    return tuple(
        export.export(jax.jit(f), platforms=(platform,), disabled_checks=unchecked)(*args).mlir_module()
        for f in (fn, jax.value_and_grad(loss, argnums=tuple(range(len(args)))))
    )
