"""Causal attention: the dispatch and its checks, the visible-key bounds, and the Pallas GPU flash attention kernels
run with the Pallas interpreter on the CPU against XLA's masked attention (forward and dq, dk, dv) for causal,
sliding-window (edges inside and at blocks) and packed-document masks, odd T, GQA, float32 and bfloat16. The kernels
are also lowered to Triton for a CUDA GPU at a real shape (the CPU builds the Triton IR)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdn_kernel_cases import rel
from pallas_kernels import attention
from pallas_kernels.attention import gpu, ops
from pallas_kernels.attention.reference import attention_mask, xla_attention

SMALL_TILES = {"flash_fwd": (32, 16, 4, 1), "flash_bwd_dkdv": (16, 32, 4, 1), "flash_bwd_dq": (16, 16, 4, 1)}


def _inputs(seed: int, batch: int, length: int, heads: int, kv_heads: int, head_dim: int, documents: bool, dtype):
    """Random q [B, T, H, D], k, v [B, T, H_kv, D], a cotangent like q, and segment ids (documents of ~12 tokens,
    different per row, one of a single token) or None."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(batch, length, h, head_dim)) for h in (heads, kv_heads, kv_heads, heads)]
    q, k, v, d_out = (jnp.asarray(a, dtype) for a in arrays)
    segment_ids = None
    if documents:
        starts = rng.uniform(size=(batch, length)) < 0.08
        starts[:, 0] = False
        starts[0, 5:7] = True  # token 5 is a document of its own
        segment_ids = jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)
    return q, k, v, d_out, segment_ids


def _outputs_and_gradients(fn, q, k, v, d_out):
    out, pullback = jax.vjp(fn, q, k, v)
    return (out, *pullback(d_out))


# (B, T, H, H_kv, D, window, documents). T is never a multiple of the blocks; D = 24 and 8 are padded to 32 and 16.
CASES = {
    "causal_gqa": (2, 37, 4, 2, 24, None, False),
    "window_edge_inside_blocks": (1, 100, 2, 2, 16, 21, False),
    "window_at_block_edge": (1, 70, 2, 1, 8, 16, False),
    "documents_gqa": (2, 100, 4, 2, 24, None, True),
    "window_and_documents": (1, 130, 2, 1, 32, 20, True),
}


@pytest.mark.parametrize("tiles", ["small", "default"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pallas_gpu_matches_xla(case, tiles, monkeypatch):
    """float32 forward and gradients within 1e-5 of XLA's masked attention; "small" tiles make every loop visit
    several blocks and skip others."""
    if tiles == "small":
        monkeypatch.setattr(gpu, "KERNEL_TILES", SMALL_TILES)
    batch, length, heads, kv_heads, head_dim, window, documents = CASES[case]
    q, k, v, d_out, segment_ids = _inputs(1, batch, length, heads, kv_heads, head_dim, documents, jnp.float32)
    scale = head_dim**-0.5
    ours = _outputs_and_gradients(
        lambda *a: gpu.pallas_gpu_attention(*a, segment_ids, window, scale, interpret=True), q, k, v, d_out
    )
    reference = _outputs_and_gradients(lambda *a: xla_attention(*a, segment_ids, window, scale), q, k, v, d_out)
    for name, x, y in zip(("o", "dq", "dk", "dv"), ours, reference):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert rel(x, y) < 1e-5, name


def test_pallas_gpu_bfloat16_close_to_float32(monkeypatch):
    """bfloat16 inputs: outputs and gradients in bfloat16 within 1e-2 of float32 attention on the same values."""
    monkeypatch.setattr(gpu, "KERNEL_TILES", SMALL_TILES)
    q, k, v, d_out, segment_ids = _inputs(2, 2, 90, 4, 2, 32, True, jnp.bfloat16)
    ours = _outputs_and_gradients(
        lambda *a: gpu.pallas_gpu_attention(*a, segment_ids, 33, 0.2, interpret=True), q, k, v, d_out
    )
    upcast = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    reference = _outputs_and_gradients(lambda *a: xla_attention(*a, segment_ids, 33, 0.2), *upcast)
    for name, x, y in zip(("o", "dq", "dk", "dv"), ours, reference):
        assert x.dtype == jnp.bfloat16, name
        assert rel(x, y) < 1e-2, name


def test_visible_bounds_match_the_mask():
    """lower_i is the first key query i sees and upper_j one past the last query that sees key j, for every row of
    a mask with documents (one of a single token) and a window."""
    _, _, _, _, segment_ids = _inputs(3, 2, 50, 1, 1, 8, True, jnp.float32)
    lower, upper = gpu.visible_bounds(segment_ids, 2, 50, 7)
    mask = np.asarray(attention_mask(segment_ids, 50, 7))[:, 0]  # [B, query, key]
    for row in range(2):
        np.testing.assert_array_equal(lower[row], mask[row].argmax(axis=1))
        np.testing.assert_array_equal(upper[row], 50 - mask[row][::-1].argmax(axis=0))
        assert all(mask[row, i, lower[row, i] : i + 1].all() for i in range(50))


def test_auto_picks_the_platforms_kernel(monkeypatch):
    """cuDNN on GPUs for bfloat16 rows without documents, the Pallas kernel for documents or float32, splash on TPUs,
    XLA on the CPU."""
    assert ops.resolve_impl("auto", jnp.bfloat16, 128, documents=False) == "xla"  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ops.resolve_impl("auto", jnp.bfloat16, 128, documents=False) == "cudnn"
    assert ops.resolve_impl("auto", jnp.bfloat16, 128, documents=True) == "pallas_gpu"
    assert ops.resolve_impl("auto", jnp.float32, 128, documents=False) == "pallas_gpu"
    assert ops.resolve_impl("auto", jnp.bfloat16, 100, documents=False) == "pallas_gpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert ops.resolve_impl("auto", jnp.bfloat16, 128, documents=True) == "pallas_tpu"


_BAD_CALLS = {
    "unknown_impl": (dict(impl="flash"), r"unknown impl 'flash'"),
    "other_platform": (dict(impl="pallas_gpu"), r"impl='pallas_gpu' needs a GPU but JAX runs on cpu"),
    "kv_heads": (dict(kv_heads=3), r"q has 4 heads, not a multiple of k's and v's 3"),
    "k_length": (dict(k_length=9), r"k has shape \(1, 9, 2, 8\) but q is \(1, 12, 4, 8\)"),
    "dtypes": (dict(k_dtype=jnp.bfloat16), r"must share one floating dtype"),
    "segment_shape": (dict(segment_ids=jnp.zeros((1, 11), jnp.int32)), r"segment_ids has shape \(1, 11\)"),
    "window": (dict(window=0), r"window must be a positive int or None, got 0"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_bad_input_raises_before_any_work(case):
    options, message = _BAD_CALLS[case]
    q = jnp.ones((1, 12, 4, 8))
    k = jnp.ones((1, options.pop("k_length", 12), options.pop("kv_heads", 2), 8), options.pop("k_dtype", q.dtype))
    with pytest.raises(ValueError, match=r"^attention: .*" + message):
        attention(q, k, k, **options)


def test_cudnn_refuses_documents_with_the_fix():
    """cuDNN's fused attention has no document masking; the message names the implementations that have."""
    q = jnp.ones((1, 16, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"impl='cudnn' has no document masking; use impl='pallas_gpu'"):
        ops.BACKENDS["cudnn"].run(q, q, q, jnp.zeros((1, 16), jnp.int32), None, 0.3)


@pytest.mark.parametrize("documents", [False, True])
def test_kernels_lower_for_cuda(documents):
    """Forward and gradient at Olmo's attention shape (T = 8192, heads of 128, bfloat16, a 4096 window) lower to
    Triton for a CUDA GPU on the CPU, with every kernel at its warps and stages."""
    spec = jax.ShapeDtypeStruct((1, 8192, 2, 128), jnp.bfloat16)
    segment_ids = jax.ShapeDtypeStruct((1, 8192), jnp.int32) if documents else None

    def loss(q, k, v, segment_ids=None):
        out = gpu.pallas_gpu_attention(q, k, v, segment_ids, 4096, 128**-0.5)
        return jnp.sum(out.astype(jnp.float32))

    from jax import export

    unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = (spec, spec, spec) + ((segment_ids,) if documents else ())
    text = export.export(grad, platforms=("cuda",), disabled_checks=unchecked)(*args).mlir_module()
    launches = re.findall(r'name = "(flash_\w+)", num_stages = (\d+) : i32, num_warps = (\d+)', text)
    assert {name for name, _, _ in launches} == set(gpu.KERNEL_TILES)
    for name, stages, warps in launches:
        assert (int(warps), int(stages)) == gpu.KERNEL_TILES[name][2:], name


def test_tiles_shrink_for_wide_rows():
    """float32 rows of 128 (or bfloat16 rows of 256) halve every block and drop prefetching, which keeps the tiles
    within a Hopper SM's shared memory (unshrunk, float32 at 128 asked 320-384 KiB of 227 KiB on an H200)."""
    bf16, f32 = dict(gpu._tiles(8192, 128 * 2)), dict(gpu._tiles(8192, 128 * 4))
    assert bf16 == dict(gpu._tiles(8192, 64 * 2)) == gpu.KERNEL_TILES
    assert f32 == dict(gpu._tiles(8192, 256 * 2))
    for name, (block_q, block_k, warps, stages) in gpu.KERNEL_TILES.items():
        assert f32[name] == (block_q // 2, block_k // 2, warps, 1)
    assert dict(gpu._tiles(20, 128 * 4))["flash_fwd"][:2] == (32, 32)
