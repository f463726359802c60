"""Tests of splash attention (impl "pallas_tpu") in the Pallas interpreter on the CPU, against ``xla_attention``.

The output and dq, dk, dv (through ``jax.vjp`` with a random cotangent) are compared on random inputs for causal
attention, sliding windows (edges inside 128-token blocks, windows of T - 1 and T), packed documents (different
per batch row, with a one-token document and a boundary on a block edge), window and documents together, T not
a multiple of 128 (padded) and grouped-query attention, in float32 and bfloat16. The forward and the gradient are
also lowered to Mosaic for a TPU at a training shape (T = 8192, window 4096, documents).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdn_kernel_cases import rel
from pallas_kernels.attention.reference import xla_attention
from pallas_kernels.attention.tpu import pallas_tpu_attention

# (B, T, H, H_kv, D, window, documents). T = 384 runs as 3 x 3 blocks of 128; 137 and 200 are padded to 256.
CASES = {
    "causal_mha": (1, 256, 2, 2, 32, None, False),
    "causal_gqa": (1, 384, 4, 2, 32, None, False),
    "window_edge_inside_blocks_gqa": (1, 384, 4, 2, 32, 100, False),
    "documents_gqa": (2, 384, 4, 2, 32, None, True),
    "window_documents_mha": (2, 384, 2, 2, 32, 100, True),
    "window_equal_to_t_documents": (2, 200, 2, 2, 32, 200, True),
    "window_one_below_t_mha": (1, 200, 2, 2, 32, 199, False),
    "odd_t_137_documents_gqa": (2, 137, 4, 2, 32, None, True),
    "odd_t_200_window_mha": (1, 200, 2, 2, 64, 50, False),
}
BF16_CASES = {
    "window_documents_gqa": (2, 384, 4, 2, 32, 100, True),
    "odd_t_137_causal_mha": (1, 137, 2, 2, 64, None, False),
}
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _segment_ids(rng: np.random.Generator, batch: int, length: int) -> jax.Array:
    """int32 [B, T]: documents starting at random tokens (different per row), in row 0 also a one-token document
    at token 5 and a document starting at token 128 (a block edge)."""
    starts = rng.uniform(size=(batch, length)) < 0.03
    starts[:, 0] = False
    starts[0, [5, 6, 128] if length > 128 else [5, 6]] = True
    return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)


def _out_and_grads(fn: Callable, *args: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """fn(q, k, v) and its VJP at the cotangent (the last of args), under one jit."""
    *inputs, cotangent = args
    out, vjp = jax.vjp(fn, *inputs)
    return out, vjp(cotangent)


def _check_against_xla(case: tuple, dtype: jnp.dtype, seed: int) -> None:
    """Output and dq, dk, dv of the interpreted kernel against ``xla_attention`` on the same random inputs."""
    batch, length, heads, kv_heads, head_dim, window, documents = case
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, h, head_dim)), dtype) for h in (heads, kv_heads, kv_heads))
    segment_ids = _segment_ids(rng, batch, length) if documents else None
    cotangent = jnp.asarray(rng.normal(size=q.shape), dtype)
    scale = head_dim**-0.5
    kernel = lambda q, k, v: pallas_tpu_attention(q, k, v, segment_ids, window, scale, interpret=True)  # noqa: E731
    reference = lambda q, k, v: xla_attention(q, k, v, segment_ids, window, scale)  # noqa: E731
    out, grads = jax.jit(functools.partial(_out_and_grads, kernel))(q, k, v, cotangent)
    out_ref, grads_ref = jax.jit(functools.partial(_out_and_grads, reference))(q, k, v, cotangent)
    tolerance = TOLERANCE[dtype]
    assert out.shape == q.shape and out.dtype == dtype
    assert rel(out, out_ref) < tolerance
    for name, grad, grad_ref in zip("qkv", grads, grads_ref):
        assert grad.shape == grad_ref.shape and grad.dtype == dtype, name
        assert rel(grad, grad_ref) < tolerance, name


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_xla(case: str):
    _check_against_xla(CASES[case], jnp.float32, seed=list(CASES).index(case))


@pytest.mark.parametrize("case", list(BF16_CASES))
def test_bfloat16_matches_xla(case: str):
    _check_against_xla(BF16_CASES[case], jnp.bfloat16, seed=list(BF16_CASES).index(case))


def test_kernel_built_inside_jit_is_reused_by_another_jit():
    """The cached splash kernel first built inside one trace must not carry that trace's values into the next."""
    q = jnp.asarray(np.random.default_rng(1).normal(size=(1, 128, 1, 8)), jnp.float32)
    attend = lambda q: pallas_tpu_attention(q, q, q, None, 16, 0.5, interpret=True)  # noqa: E731
    out = jax.jit(attend)(q)
    grad = jax.jit(jax.grad(lambda q: jnp.sum(attend(q))))(q)
    assert rel(out, xla_attention(q, q, q, None, 16, 0.5)) < 1e-5
    assert rel(grad, jax.grad(lambda q: jnp.sum(xla_attention(q, q, q, None, 16, 0.5)))(q)) < 1e-5


@pytest.mark.parametrize("dtypes", [(jnp.float16,) * 3, (jnp.float32, jnp.bfloat16, jnp.bfloat16)])
def test_unsupported_dtypes_raise(dtypes: tuple):
    q, k, v = (jnp.ones((1, 8, 1, 8), dtype) for dtype in dtypes)
    with pytest.raises(ValueError, match="attention: impl='pallas_tpu' takes q, k, v of one dtype in"):
        pallas_tpu_attention(q, k, v, None, None, 1.0, interpret=True)


@pytest.mark.parametrize("kv_heads", [16, 4])
def test_lowers_to_mosaic_for_tpu(kv_heads: int):
    """Forward, and a loss with its gradient, at B = 1, T = 8192, H = 16, D = 128, bfloat16, window 4096 and
    documents lower to splash's Mosaic kernels for a TPU on the CPU (the Mosaic compiler itself runs on the TPU)."""
    batch, length, heads, head_dim = 1, 8192, 16, 128
    specs = [jax.ShapeDtypeStruct((batch, length, h, head_dim), jnp.bfloat16) for h in (heads, kv_heads, kv_heads)]
    specs.append(jax.ShapeDtypeStruct((batch, length), jnp.int32))
    attend = lambda q, k, v, ids: pallas_tpu_attention(q, k, v, ids, 4096, head_dim**-0.5)  # noqa: E731
    loss = lambda *args: jnp.sum(attend(*args).astype(jnp.float32))  # noqa: E731
    forward, gradient = (
        jax.jit(f).trace(*specs).lower(lowering_platforms=("tpu",)).as_text()
        for f in (attend, jax.value_and_grad(loss, argnums=(0, 1, 2)))
    )
    kernels = lambda text: re.findall(r'kernel_name = "(\w+)"', text)  # noqa: E731
    assert kernels(forward) == ["splash_mha_fwd_segmented_no_residuals"]
    assert kernels(gradient) == [
        "splash_mha_fwd_segmented_residuals",
        "splash_mha_dkv_segmented_no_residuals",
        "splash_mha_dq_segmented_no_residuals",
    ]
