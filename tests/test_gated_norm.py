"""Tests of the gated RMSNorm: the Pallas GPU kernels in the Pallas interpreter on the CPU (and compiled, on a GPU),
the XLA form, and the entry point's dispatch and input checks.

The oracle is the norm and its gradients written out in float64 numpy from the definition,
y = w * x / sqrt(mean(x^2) + eps) * g * sigmoid(g) over the last axis.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gated_rms_norm, target_platform
from pallas_kernels.gated_norm import gpu, ops
from pallas_kernels.gated_norm.reference import xla_gated_rms_norm

EPS = 1e-5
BOUNDS = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _oracle(x: np.ndarray, g: np.ndarray, w: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, ...]:
    """y, dx, dg, dw for the output cotangent dy, in float64, row by row."""
    width = x.shape[-1]
    r = 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)
    n = x * r
    sigmoid = 1 / (1 + np.exp(-g))
    silu = g * sigmoid
    dn = dy * w * silu
    dx = r * dn - x * r**3 * np.sum(dn * x, axis=-1, keepdims=True) / width
    dg = dy * w * n * sigmoid * (1 + g * (1 - sigmoid))
    dw = np.sum((dy * n * silu).reshape(-1, width), axis=0)
    return w * n * silu, dx, dg, dw


def _inputs(shape: tuple[int, ...], dtype, seed: int) -> tuple[jax.Array, ...]:
    """x (scaled by 3), gate, a cotangent [..., D] and weight [D] around 1, fresh normal values."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(3 * rng.normal(size=shape), dtype)
    gate, dy = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(2))
    return x, gate, dy, jnp.asarray(1 + rng.normal(size=shape[-1:]) / 4, jnp.float32)


def _rel(a: jax.Array, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _value_and_grads(norm, x, gate, dy, w) -> list[jax.Array]:
    y, pullback = jax.vjp(norm, x, gate, w)
    return [y, *pullback(dy)]


@pytest.mark.parametrize(
    "shape, dtype, tiling",
    [
        ((2, 32, 3, 192), jnp.float32, gpu.Tiling()),  # 192 in three parts of 64, one program
        ((2, 40, 4, 96), jnp.float32, gpu.Tiling(rows=32)),  # 96 in three of 32, ten programs
        ((1, 16, 2, 128), jnp.float32, gpu.Tiling(rows=16)),  # 128 in two of 64
        ((3, 16, 16), jnp.float32, gpu.Tiling(rows=16)),
        ((2, 32, 3, 192), jnp.bfloat16, gpu.Tiling(rows=32)),
    ],
)
def test_kernels_match_the_oracle(shape, dtype, tiling):
    x, gate, dy, w = _inputs(shape, dtype, seed=sum(shape))
    norm = lambda x, g, w: gpu.pallas_gpu_gated_rms_norm(x, g, w, EPS, tiling=tiling, interpret=True)  # noqa: E731
    got = _value_and_grads(norm, x, gate, dy, w)
    want = _oracle(*(np.asarray(a, np.float64) for a in (x, gate, w, dy)))
    for a, b in zip(got, want):
        assert _rel(a, b) < BOUNDS[dtype]


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
def test_entry_point_matches_the_oracle(impl: str):
    x, gate, dy, w = _inputs((2, 16, 2, 64), jnp.float32, seed=5)
    with target_platform("gpu" if impl == "pallas_gpu" else "cpu"):
        if impl == "pallas_gpu":
            norm = lambda x, g, w: gpu.pallas_gpu_gated_rms_norm(x, g, w, EPS, interpret=True)  # noqa: E731
        else:
            norm = lambda x, g, w: gated_rms_norm(x, g, w, EPS, impl=impl)  # noqa: E731
        got = _value_and_grads(norm, x, gate, dy, w)
    want = _oracle(*(np.asarray(a, np.float64) for a in (x, gate, w, dy)))
    for a, b in zip(got, want):
        assert _rel(a, b) < 1e-5


def test_xla_form_rounds_the_normalised_input_like_the_model():
    """In bfloat16 the XLA form rounds x / rms to bfloat16 before the weight multiplies it (the kernels do too)."""
    x, gate, _, w = _inputs((2, 16, 64), jnp.bfloat16, seed=7)
    x32 = x.astype(jnp.float32)
    normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)).astype(jnp.bfloat16)
    want = (w * normed.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(xla_gated_rms_norm(x, gate, w, EPS)), np.asarray(want))
    kernel = gpu.pallas_gpu_gated_rms_norm(x, gate, w, EPS, tiling=gpu.Tiling(rows=16), interpret=True)
    assert _rel(kernel, np.asarray(want, np.float64)) < 4e-3


def test_auto_takes_the_kernels_on_gpus_and_xla_elsewhere_or_for_other_shapes():
    assert ops.resolve_impl("auto", (2, 64, 16, 192)) == "xla"  # this CPU
    with target_platform("gpu"):
        assert ops.resolve_impl("auto", (2, 64, 16, 192)) == "pallas_gpu"
        assert ops.resolve_impl("auto", (1, 1, 3, 192)) == "xla"  # 3 rows
        assert ops.resolve_impl("pallas_gpu", (2, 64, 16, 40)) == "xla"  # D not a multiple of 16
    with target_platform("tpu"):
        assert ops.resolve_impl("auto", (2, 64, 16, 192)) == "xla"


@pytest.mark.parametrize(
    "args, message",
    [
        ((jnp.zeros((4, 16)), jnp.zeros((4, 8)), jnp.zeros(16)), r"expected x, gate \[..., D\] and weight \[D\]"),
        ((jnp.zeros((4, 16)), jnp.zeros((4, 16)), jnp.zeros(8)), r"expected x, gate \[..., D\] and weight \[D\]"),
        ((jnp.zeros((4, 16)), jnp.zeros((4, 16), jnp.bfloat16), jnp.zeros(16)), "share one floating dtype"),
        ((jnp.zeros((4, 16)), jnp.zeros((4, 16)), jnp.zeros(16, jnp.int32)), "weight must be floating"),
    ],
)
def test_bad_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        gated_rms_norm(*args, EPS)


def test_bad_impls_are_named():
    x = jnp.zeros((16, 16))
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        gated_rms_norm(x, x, jnp.ones(16), EPS, impl="cuda")
    with pytest.raises(ValueError, match="needs a GPU but JAX runs on cpu; use impl='auto'"):
        gated_rms_norm(x, x, jnp.ones(16), EPS, impl="pallas_gpu")


def test_kernels_lower_for_cuda():
    """The norm and its gradient lower to Triton calls for a CUDA GPU (the CPU builds the IR), at the 1B hybrid's
    value heads."""
    from jax import export

    x, w = jnp.zeros((1, 8192, 16, 192), jnp.bfloat16), jnp.zeros((192,), jnp.float32)
    loss = lambda x, g, w: jnp.sum(gpu.pallas_gpu_gated_rms_norm(x, g, w, EPS).astype(jnp.float32))  # noqa: E731
    unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    module = export.export(jax.jit(jax.grad(loss, (0, 1, 2))), platforms=("cuda",), disabled_checks=unchecked)(x, x, w)
    assert {"gated_norm_fwd", "gated_norm_bwd"} <= set(re.findall(r"gated_norm_\w+", module.mlir_module()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_kernels_match_xla(dtype):
    """On a GPU: the compiled kernels' output and gradients against XLA's autodiff in float32, at the 1B hybrid's
    value heads."""
    x, gate, dy, w = _inputs((2, 2048, 16, 192), dtype, seed=3)
    upcast = [a.astype(jnp.float32) for a in (x, gate, dy)]
    want = _value_and_grads(lambda x, g, w: xla_gated_rms_norm(x, g, w, EPS), upcast[0], upcast[1], upcast[2], w)
    norm = lambda x, g, w: gpu.pallas_gpu_gated_rms_norm(x, g, w, EPS)  # noqa: E731
    got = jax.jit(lambda x, g, dy, w: _value_and_grads(norm, x, g, dy, w))(x, gate, dy, w)
    for a, b in zip(got, want):
        assert _rel(a, np.asarray(b, np.float64)) < BOUNDS[dtype]
