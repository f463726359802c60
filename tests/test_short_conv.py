"""Tests of the short convolution: the Pallas GPU backward in the Pallas interpreter on the CPU (and compiled, on a
GPU), the XLA form, and the entry point's dispatch and input checks.

The oracle is the convolution written out token by token in float64 numpy, forward and backward, from its
definition: out[t] = SiLU(p[t]), p[t] = sum over s < K of w[K - 1 - s] * x[t - s] over the taps inside t's document;
with the L2 norm per head, z = out / n, n = sqrt(sum of out^2 over the head + eps), whose Jacobian dz_i/dout_j is
delta_ij / n - out_i out_j / n^3.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import short_conv, target_platform
from pallas_kernels.short_conv import gpu, ops
from pallas_kernels.short_conv.reference import L2_EPS, xla_short_conv

BOUNDS = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _oracle(
    x: np.ndarray, w: np.ndarray, segments: np.ndarray | None, dy: np.ndarray, head_dim: int | None = None
) -> tuple[np.ndarray, ...]:
    """out, dx, dw of the convolution (L2-normalised over heads of head_dim channels, when given) for the output
    cotangent dy, token by token in float64."""
    batch, length, width = x.shape
    taps = w.shape[0]
    reads = lambda b, t, u: u >= 0 and (segments is None or segments[b, u] == segments[b, t])  # noqa: E731
    p = np.zeros_like(x)
    for b in range(batch):
        for t in range(length):
            for s in range(taps):
                if reads(b, t, t - s):
                    p[b, t] += w[taps - 1 - s] * x[b, t - s]
    sigmoid = 1 / (1 + np.exp(-p))
    out = p * sigmoid
    if head_dim is not None:
        heads = out.reshape(batch, length, width // head_dim, head_dim)
        n = np.sqrt(np.sum(heads**2, axis=-1, keepdims=True) + L2_EPS)
        jacobian = np.eye(head_dim) / n[..., None] - heads[..., :, None] * heads[..., None, :] / n[..., None] ** 3
        out = (heads / n).reshape(x.shape)
        dy = np.einsum("bthij,bthi->bthj", jacobian, dy.reshape(heads.shape)).reshape(x.shape)
    dp = dy * sigmoid * (1 + p * (1 - sigmoid))
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for b in range(batch):
        for t in range(length):
            for s in range(taps):
                if reads(b, t, t - s):
                    dx[b, t - s] += w[taps - 1 - s] * dp[b, t]
                    dw[taps - 1 - s] += x[b, t - s] * dp[b, t]
    return out, dx, dw


def _inputs(shape: tuple[int, ...], taps: int, documents: bool, dtype, seed: int) -> tuple:
    """x, a cotangent [B, T, C], weight [K, C] (fresh normal values) and segment ids (runs of ~10 tokens) or None."""
    batch, length, width = shape
    rng = np.random.default_rng(seed)
    x, dy = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(taps, width)) / 2, dtype)
    segments = None
    if documents:
        segments = jnp.asarray(np.cumsum(rng.uniform(size=(batch, length)) < 0.1, axis=1), jnp.int32)
    return x, w, dy, segments


def _rel(a: jax.Array, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _as_float64(*arrays) -> list[np.ndarray | None]:
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


@pytest.mark.parametrize(
    "shape, taps, documents, dtype, tiles, head_dim",
    [
        ((2, 64, 32), 4, False, jnp.float32, {}, None),
        ((2, 64, 32), 4, True, jnp.float32, {}, None),
        ((1, 48, 48), 3, True, jnp.float32, {}, None),  # three row groups of 16, channel tiles of 16
        ((1, 1024, 16), 4, True, jnp.float32, {}, None),  # two row groups of 512
        ((2, 64, 64), 4, True, jnp.float32, {"rows": 32, "channels": 16, "group": 32}, None),
        ((1, 32, 16), 1, True, jnp.float32, {}, None),
        ((2, 64, 32), 4, True, jnp.bfloat16, {}, None),
        ((2, 64, 192), 4, True, jnp.float32, {}, 96),  # two heads, each loaded in three parts of 32
        ((1, 48, 128), 3, False, jnp.float32, {"rows": 16, "group": 16}, 64),  # heads of one part, three row groups
        ((1, 32, 48), 4, True, jnp.float32, {}, 16),
        ((2, 64, 192), 4, True, jnp.bfloat16, {}, 96),
    ],
)
def test_kernels_match_the_oracle(shape, taps, documents, dtype, tiles, head_dim):
    """The forward and dx, dw of the kernels (interpreter) against the float64 oracle: several row groups and
    channel tiles, odd K, documents starting anywhere (also within K tokens of each other and of a step's start), the
    L2 norm over heads of one and of several loads."""
    x, w, dy, segments = _inputs(shape, taps, documents, dtype, seed=shape[1] + taps)
    want_out, want_dx, want_dw = _oracle(*_as_float64(x, w, segments, dy), head_dim)
    tiling = gpu.Tiling(**tiles)
    out = gpu.short_conv_forward(x, w, segments, head_dim, interpret=True, tiling=tiling)
    dx, dw = gpu.short_conv_backward(x, w, segments, dy, head_dim, interpret=True, tiling=tiling)
    assert out.dtype == dx.dtype == x.dtype and dw.dtype == w.dtype
    assert _rel(out, want_out) < BOUNDS[dtype]
    assert _rel(dx, want_dx) < BOUNDS[dtype]
    assert _rel(dw, want_dw) < BOUNDS[dtype]


@pytest.mark.parametrize("head_dim", [None, 16])
@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
def test_gradients_through_the_entry_point_match_the_oracle(impl: str, head_dim: int | None):
    """short_conv's output and jax.grad for both implementations (the kernel's through its custom VJP)."""
    x, w, dy, segments = _inputs((2, 32, 32), 4, True, jnp.float32, seed=7)
    want = _oracle(*_as_float64(x, w, segments, dy), head_dim)
    run = gpu.pallas_gpu_short_conv if impl == "pallas_gpu" else xla_short_conv
    options = {"interpret": True} if impl == "pallas_gpu" else {}
    assert _rel(run(x, w, segments, head_dim, **options), want[0]) < 1e-5  # the primal, outside autodiff
    out, pullback = jax.vjp(lambda x, w: run(x, w, segments, head_dim, **options), x, w)
    for got, expected in zip((out, *pullback(dy)), want):
        assert _rel(got, expected) < 1e-5


def test_auto_takes_the_kernel_on_gpus_and_xla_elsewhere_or_for_other_shapes():
    assert ops.resolve_impl("auto", (2, 64, 32), 4) == "xla"  # this CPU
    with target_platform("gpu"):
        assert ops.resolve_impl("auto", (2, 64, 32), 4) == "pallas_gpu"
        assert ops.resolve_impl("auto", (2, 1000, 32), 4) == "xla"  # T not a multiple of 16
        assert ops.resolve_impl("pallas_gpu", (2, 64, 40), 4) == "xla"  # C not a multiple of 16
        assert ops.resolve_impl("auto", (2, 64, 192), 4, 96) == "pallas_gpu"
        assert ops.resolve_impl("auto", (2, 64, 192), 4, 24) == "xla"  # heads not a multiple of 16
        assert ops.resolve_impl("auto", (2, 64, 1024), 4, 512) == "xla"  # heads over 256 channels
    with target_platform("tpu"):
        assert ops.resolve_impl("auto", (2, 64, 32), 4) == "xla"


@pytest.mark.parametrize(
    "args, message",
    [
        ((jnp.zeros((2, 8)), jnp.zeros((4, 8))), r"expected x \[B, T, C\]"),
        ((jnp.zeros((2, 8, 16)), jnp.zeros((4, 8))), r"expected weight \[K, C\] with C = 16"),
        ((jnp.zeros((2, 8, 16)), jnp.zeros((4, 16), jnp.bfloat16)), "share one floating dtype"),
        ((jnp.zeros((2, 8, 16)), jnp.zeros((4, 16)), jnp.zeros((2, 9), jnp.int32)), r"expected int \[B, T\]"),
        ((jnp.zeros((2, 8, 16)), jnp.zeros((4, 16)), None, 6), "l2_head_dim=6 does not divide the channels"),
    ],
)
def test_bad_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        short_conv(*args[:3], l2_head_dim=args[3] if len(args) > 3 else None)


def test_bad_impls_are_named():
    x, w = jnp.zeros((1, 16, 16)), jnp.zeros((4, 16))
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        short_conv(x, w, impl="cuda")
    with pytest.raises(ValueError, match="needs a GPU but JAX runs on cpu; use impl='auto'"):
        short_conv(x, w, impl="pallas_gpu")


@pytest.mark.parametrize("documents, head_dim", [(False, None), (True, None), (True, 96), (False, 128)])
def test_backward_lowers_for_cuda(documents: bool, head_dim: int | None):
    """The loss and its gradient on the kernel path lower to Triton calls for a CUDA GPU (the CPU builds the IR), at
    the 1B hybrid's key width, with and without the L2 norm over its heads of 96 (and over heads of 128)."""
    from jax import export

    x, w = jnp.zeros((1, 8192, 1536), jnp.bfloat16), jnp.zeros((4, 1536), jnp.bfloat16)
    segments = jnp.zeros((1, 8192), jnp.int32) if documents else None
    loss = lambda x, w: jnp.sum(gpu.pallas_gpu_short_conv(x, w, segments, head_dim).astype(jnp.float32))  # noqa: E731
    unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    module = export.export(jax.jit(jax.value_and_grad(loss, (0, 1))), platforms=("cuda",), disabled_checks=unchecked)(
        x, w
    )
    kernels = {"short_conv_fwd", "short_conv_bwd_gradient", "short_conv_bwd_transpose"}
    assert set(re.findall(r"\((short_conv_\w+)\)", module.mlir_module())) == kernels  # the pallas_call names


@pytest.mark.gpu
@pytest.mark.parametrize("documents, head_dim", [(False, None), (True, None), (True, 96)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_kernels_match_xla(documents: bool, head_dim: int | None, dtype):
    """On a GPU: the compiled kernels' output and dx, dw against XLA's float32 forward and autodiff, at the 1B
    hybrid's value width, and with the L2 norm over heads of 96."""
    x, w, dy, segments = _inputs((2, 4096, 3072), 4, documents, dtype, seed=3)
    upcast = [a.astype(jnp.float32) for a in (x, w, dy)]
    out, pullback = jax.vjp(lambda x, w: xla_short_conv(x, w, segments, head_dim), *upcast[:2])
    want = [np.asarray(a, np.float64) for a in (out, *pullback(upcast[2]))]
    got = jax.jit(
        lambda x, w, dy: (
            gpu.short_conv_forward(x, w, segments, head_dim),
            *gpu.short_conv_backward(x, w, segments, dy, head_dim),
        )
    )(x, w, dy)
    for a, b in zip(got, want):
        assert _rel(a, b) < BOUNDS[dtype]
