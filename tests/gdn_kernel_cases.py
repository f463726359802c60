"""Inputs and helpers shared by the Pallas GDN kernel tests (GPU and TPU kernels, both run in interpret mode)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gdn.naive import naive_gated_delta_rule

GRAD_NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def rel(a: jax.Array, b: jax.Array) -> float:
    """||a - b|| / ||b||, computed in float64 numpy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_inputs(seed: int, shape: tuple[int, int, int, int, int], regime: str) -> dict[str, jax.Array]:
    """q, k (L2-normalised) [B, T, H, K], v [B, T, H, V], g, beta [B, T, H], initial_state, resets [B, T].

    regime "mixed": gates near 0, in [-20, 0] and some -1e4; "extreme": near 0 with -1e4 every few tokens.
    Resets fall at random, exactly at chunk boundaries (16, 32, 64) and as a one-token document.
    """
    batch, length, heads, key_dim, value_dim = shape
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    u = rng.uniform(size=(3, batch, length, heads))
    near_zero = -1e-3 * u[0]
    if regime == "mixed":
        g = np.where(u[2] < 0.45, near_zero, np.where(u[2] < 0.93, -20.0 * u[1], -1e4))
    else:
        g = np.where(u[2] < 0.85, near_zero, -1e4)
    resets = rng.uniform(size=(batch, length)) < 0.06
    resets[:, 0] = False
    resets[0, [c for c in (16, 32, 64) if c < length]] = True
    resets[-1, 1] = True
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


def probe_gradients(fn: Callable, x: dict[str, jax.Array], seed: int) -> list[jax.Array]:
    """Gradients of <o, probe_o> + <final, probe_state> with respect to GRAD_NAMES."""
    rng = np.random.default_rng(seed)
    o, final = jax.eval_shape(fn, *differentiable_args(x))
    probe_o = jnp.asarray(rng.normal(size=o.shape), jnp.float32)
    probe_state = jnp.asarray(rng.normal(size=final.shape), jnp.float32)

    def loss(*args: jax.Array) -> jax.Array:
        o, final = fn(*args)
        return jnp.sum(o * probe_o) + jnp.sum(final * probe_state)

    return jax.jit(jax.grad(loss, argnums=tuple(range(len(GRAD_NAMES)))))(*differentiable_args(x))


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
