"""Tests of the Pallas TPU gated delta rule kernels, run in the TPU interpreter on the CPU.

The kernel runs with ``interpret=pltpu.InterpretParams()`` against the naive time-step scan, on tiny shapes: T not a
multiple of the chunk, K and V not powers of two (so K, V and T are all padded), initial state, document resets (at
chunk boundaries 16, 32 and 64, and a one-token document), beta in [0, 2] and gates near 0, in [-20, 0] and -1e4.
Gradients go through the custom_vjp: the chunked form's chunk-parallel VJP around the Pallas state-scan kernels
(forward and reverse), which are also checked on their own against ``lax.scan``. Outputs and gradients are checked
against the float64 recurrence at chunk 16, and at chunk 64 (the model's) with K = 96 (padded to one 128-lane block)
and K = 128 (unpadded), the latter with gates and documents that let the state reach across whole chunks. The
kernels take float32 only (``gated_delta_rule`` casts bfloat16 inputs to float32 for them), so no case is bfloat16.
The forward and the gradient are also lowered to Mosaic for a TPU at the Olmo Hybrid head dims.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from gdn_kernel_cases import (
    BOUNDS,
    Case,
    check_against_naive,
    differentiable_args,
    lowered_modules,
    naive,
    random_inputs,
    rel,
)
from pallas_kernels import gated_delta_rule
from pallas_kernels.gdn import chunked, tpu


def _kernel(x: dict[str, jax.Array], chunk: int) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the kernel in the TPU interpreter."""
    scale = x["q"].shape[-1] ** -0.5

    def run(q, k, v, g, beta, initial_state):
        return tpu.pallas_tpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], scale, chunk, interpret=pltpu.InterpretParams()
        )

    return run


def test_state_scan_kernels_match_lax_scan():
    """The Pallas state scan and its reverse kernel against ``lax_state_scan`` and its autodiff VJP, on random
    inputs (decays in (0, 1]) and random cotangents for all three outputs."""
    rng = np.random.default_rng(7)
    batch, heads, chunks, chunk, key_dim, value_dim = 1, 2, 3, 16, 128, 128
    shapes = [(chunks, chunk, key_dim), (chunks, chunk, value_dim), (chunks, chunk, key_dim), (chunks,)]
    args = [rng.normal(size=(batch, heads, *shape)) for shape in shapes[:3]]
    args += [rng.uniform(0.0, 1.0, size=(batch, heads, chunks)), rng.normal(size=(batch, heads, key_dim, value_dim))]
    args = [jnp.asarray(a, jnp.float32) for a in args]
    pallas_scan = lambda *a: tpu._pallas_state_scan(*a, pltpu.InterpretParams())  # noqa: E731
    outs, pallas_vjp = jax.vjp(pallas_scan, *args)
    outs_ref, reference_vjp = jax.vjp(chunked.lax_state_scan, *args)
    for out, out_ref in zip(outs, outs_ref):
        assert rel(out, out_ref) < 1e-5
    cotangents = tuple(jnp.asarray(rng.normal(size=o.shape), jnp.float32) for o in outs)
    for grad, grad_ref in zip(pallas_vjp(cotangents), reference_vjp(cotangents)):
        assert np.linalg.norm(grad_ref) > 0
        assert rel(grad, grad_ref) < 1e-5


# (B, T, H, K, V), chunk, gate regime. T is never a multiple of the chunk.
FORWARD_CASES = {
    "c16_mixed": ((2, 40, 2, 12, 40), 16, "mixed"),
    "c16_extreme_gates": ((1, 40, 2, 8, 8), 16, "extreme"),
    "c32_mixed": ((1, 70, 2, 24, 20), 32, "mixed"),
    "c64_mixed": ((1, 100, 2, 40, 36), 64, "mixed"),
}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_matches_naive(case: str):
    shape, chunk, regime = FORWARD_CASES[case]
    x = random_inputs(1, shape, regime)
    o, final = _kernel(x, chunk)(*differentiable_args(x))
    o_ref, final_ref = naive(x)(*differentiable_args(x))
    batch, length, heads, key_dim, value_dim = shape
    assert o.shape == (batch, length, heads, value_dim) and o.dtype == jnp.float32
    assert final.shape == (batch, heads, key_dim, value_dim) and final.dtype == jnp.float32
    assert rel(o, o_ref) < 1e-5
    assert rel(final, final_ref) < 1e-5


GRADIENT_CASES = {
    "c16": Case((1, 40, 2, 12, 20), 16),
    "c64_k96": Case((1, 100, 1, 96, 16), 64),
    "c64_k128_long": Case((1, 100, 1, 128, 16), 64, "long"),
}
# Two 128-lane key blocks (K = 200 padded to 256), batch rows, heads and four chunks.
SLOW_GRADIENT_CASES = {"c64_k200_heads_long": Case((2, 200, 2, 200, 48), 64, "long")}


@pytest.mark.parametrize(
    "case",
    [*GRADIENT_CASES, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_GRADIENT_CASES)],
)
def test_gradients_match_naive(case: str):
    case = {**GRADIENT_CASES, **SLOW_GRADIENT_CASES}[case]
    x = random_inputs(2, case.shape, case.regime)
    check_against_naive(_kernel(x, case.chunk), x, BOUNDS[np.dtype(case.dtype)], seed=3)


def _bad_inputs(key_dim: int, value_dim: int, dtype: jnp.dtype) -> tuple[jax.Array, ...]:
    """Zero inputs (B = 1, T = 4, H = 1) with the given K, V and dtype."""
    q = jnp.zeros((1, 4, 1, key_dim), dtype)
    v = jnp.zeros((1, 4, 1, value_dim), dtype)
    g = jnp.zeros((1, 4, 1), dtype)
    state = jnp.zeros((1, 1, key_dim, value_dim), dtype)
    return q, q, v, g, g, state, jnp.zeros((1, 4), bool)


@pytest.mark.parametrize(
    "key_dim, value_dim, dtype, chunk, message",
    [
        (257, 8, jnp.float32, 16, "K = 257 exceeds the limit 256"),
        (8, 300, jnp.float32, 16, "V = 300 exceeds the limit 256"),
        (8, 8, jnp.bfloat16, 16, "dtype bfloat16"),
        (8, 8, jnp.float32, 24, "chunk_size = 24"),
    ],
)
def test_bad_inputs_raise_before_launch(key_dim: int, value_dim: int, dtype: jnp.dtype, chunk: int, message: str):
    with pytest.raises(ValueError, match=message):
        tpu.pallas_tpu_gated_delta_rule(*_bad_inputs(key_dim, value_dim, dtype), 1.0, chunk, interpret=True)


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="checks the refusal on machines without a TPU")
def test_entry_point_refuses_pallas_tpu_without_a_tpu():
    q = jnp.ones((1, 4, 1, 8))
    gates = jnp.full((1, 4, 1), -0.1)
    with pytest.raises(ValueError, match="impl='pallas_tpu' needs a TPU"):
        gated_delta_rule(q, q, q, gates, gates, impl="pallas_tpu")


def test_kernels_lower_for_tpu():
    """Forward and gradient at the Olmo Hybrid head dims (K = 96, V = 192) lower to Mosaic for a TPU on the CPU
    (block shapes, tiling and memory spaces pass Pallas' Mosaic lowering; the Mosaic compiler runs on the TPU)."""
    x = random_inputs(8, (1, 100, 2, 96, 192), "mixed")

    def run(q, k, v, g, beta, initial_state):
        return tpu.pallas_tpu_gated_delta_rule(q, k, v, g, beta, initial_state, x["resets"], 96**-0.5, 64)

    forward, gradient = lowered_modules(run, x, "tpu")
    kernels = lambda text: re.findall(r'kernel_name = "(\w+)"', text)  # noqa: E731
    assert kernels(forward) == ["_prep_kernel", "_scan_kernel"]
    assert kernels(gradient) == ["_prep_kernel", "_scan_kernel", "_states_kernel", "_states_bwd_kernel"]
