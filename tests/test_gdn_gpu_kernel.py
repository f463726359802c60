"""Tests of the Pallas GPU gated delta rule kernels, run with the Pallas interpreter on the CPU.

Every kernel runs with ``interpret=True`` against the naive time-step scan in float32, on tiny shapes: T not a
multiple of the chunk, K and V not multiples of 16 (so K, V and T are all padded), several value tiles, initial
state, document resets, beta in [0, 2] and gates near 0, in [-20, 0] and -1e4. The forward and the gradient are
also lowered to Triton for a CUDA GPU at the Olmo Hybrid head dims (the CPU builds the Triton IR).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdn_kernel_cases import (
    GRAD_NAMES,
    differentiable_args,
    lowered_modules,
    naive,
    probe_gradients,
    random_inputs,
    rel,
)
from pallas_kernels import gated_delta_rule
from pallas_kernels.gdn import gpu


def _kernel(x: dict[str, jax.Array], chunk: int, **options) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the kernels in the interpreter."""
    scale = x["q"].shape[-1] ** -0.5

    def run(q, k, v, g, beta, initial_state):
        return gpu.pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], scale, chunk, interpret=True, **options
        )

    return run


def test_default_block_v_fills_the_sms_without_queueing():
    """The scans' BV halves (more, shorter programs) while B * H * V / BV stays within 1.5 programs per SM (132 SMs
    assumed off the GPU), never below 16 nor above the widest power of two dividing the value width."""
    assert gpu._default_block_v(30, 192) == 32  # Olmo Hybrid 7B: 180 programs
    assert gpu._default_block_v(32, 256) == 64  # 128 programs; at 32 there would be 256
    assert gpu._default_block_v(16, 128) == 16  # 128 programs
    assert gpu._default_block_v(1, 48) == 16  # 48 = 3 x 16: no wider tile divides it
    assert gpu._default_block_v(256, 256) == 64


def test_scan_stages_leave_room_for_the_state_conversions():
    """The scans prefetch (2 or 3 stages) only while the stage buffers plus the state's and v_new's operand conversions
    fit in a program's share of shared memory: the reverse scan at K = V = 256, BV = 64 in bfloat16 asked 248 KiB on
    an H100 with 2 stages, and 3 stages at the Olmo Hybrid shape (180 programs) left room for one program per SM."""

    def stages(heads: int, key_dim: int, value_dim: int, block_v: int, dtype) -> int:
        q, v = (jax.ShapeDtypeStruct((1, 64, heads, d), dtype) for d in (key_dim, value_dim))
        cfg = gpu._make_config(q, v, {}, 64, False, dtype, block_v, 1.0)
        step_bytes = (3 * cfg.key_width + cfg.block_v) * cfg.chunk * cfg.matmul_dtype.itemsize
        return gpu._scan_stages(step_bytes, heads * cfg.num_v_blocks, cfg)

    assert stages(16, 256, 256, 64, jnp.bfloat16) == 1
    assert stages(16, 256, 256, 32, jnp.bfloat16) == 2
    assert stages(16, 96, 192, 32, jnp.bfloat16) == 3  # 96 programs: one per SM
    assert stages(30, 96, 192, 32, jnp.bfloat16) == 2  # 180 programs: two share an SM
    assert stages(16, 128, 256, 64, jnp.float32) == 1


# (B, T, H, K, V), chunk, options, gate regime. T is never a multiple of the chunk; K = 72 (padded to 80) is
# stepped in five 16-wide key blocks and scanned as two state parts (64 + 16); block_v = 16 with V = 40 gives three
# value tiles (V padded to 48, not a power of two).
FORWARD_CASES = {
    "c16_tiles": ((2, 40, 2, 12, 40), 16, dict(block_v=16), "mixed"),
    "c16_extreme_gates": ((1, 40, 2, 8, 8), 16, dict(), "extreme"),
    "c32": ((1, 70, 2, 24, 20), 32, dict(block_v=32), "mixed"),
    "c64_two_key_blocks": ((1, 100, 1, 72, 24), 64, dict(block_v=16), "mixed"),
}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_matches_naive(case: str):
    shape, chunk, options, regime = FORWARD_CASES[case]
    x = random_inputs(1, shape, regime)
    o, final = _kernel(x, chunk, **options)(*differentiable_args(x))
    o_ref, final_ref = naive(x)(*differentiable_args(x))
    batch, length, heads, key_dim, value_dim = shape
    assert o.shape == (batch, length, heads, value_dim) and o.dtype == jnp.float32
    assert final.shape == (batch, heads, key_dim, value_dim) and final.dtype == jnp.float32
    assert rel(o, o_ref) < 1e-5
    assert rel(final, final_ref) < 1e-5


GRADIENT_CASES = {
    "c16_tiles": ((1, 40, 2, 12, 40), 16, dict(block_v=16), "mixed"),
    "c32_two_key_blocks": ((1, 40, 1, 72, 16), 32, dict(), "extreme"),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_naive(case: str):
    shape, chunk, options, regime = GRADIENT_CASES[case]
    x = random_inputs(2, shape, regime)
    for name, d_kernel, d_naive in zip(
        GRAD_NAMES, probe_gradients(_kernel(x, chunk, **options), x, 3), probe_gradients(naive(x), x, 3)
    ):
        assert np.all(np.isfinite(d_kernel)), name
        assert np.linalg.norm(d_naive) > 0, name
        assert rel(d_kernel, d_naive) < 1e-5, name


@pytest.mark.parametrize("chunk", gpu.CHUNK_SIZES)
def test_unit_lower_inverses(chunk: int):
    """Both inverses of one call against float64 numpy: a delta-rule A (unit keys, beta up to 2) and a generic
    strictly lower A whose inverse grows (entries up to ~450 for C = 64)."""
    rng = np.random.default_rng(chunk)
    keys = rng.normal(size=(chunk, 4))
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    delta_rule = rng.uniform(1.5, 2.0, size=(chunk, 1)) * (keys @ keys.T)
    generic = 0.5 * rng.normal(size=(chunk, chunk))
    blocks = [np.tril(delta_rule, -1), np.tril(generic, -1)]
    inverses = gpu._unit_lower_inverses([jnp.asarray(a, jnp.float32) for a in blocks])
    for a, inverse in zip(blocks, inverses):
        assert rel(inverse, np.linalg.inv(np.eye(chunk) + a)) < 1e-5


@pytest.mark.parametrize("chunk", gpu.CHUNK_SIZES)
def test_solve_kernel_matches_float64(chunk: int):
    """The solve kernel's (I + A)^-1 per chunk against float64 numpy, with A built from the definition: gates
    near 0 and -1e4, beta up to 2, and document starts (A and Gamma are zero across documents)."""
    x = random_inputs(chunk, (1, 2 * chunk, 2, 24, 8), "mixed")
    length = 2 * chunk
    cfg = gpu._make_config(x["q"], x["v"], {}, chunk, True, jnp.float32, None, 0.5)
    _, k, _, g, beta, doc = gpu._prepare(x["q"], x["k"], x["v"], x["g"], x["beta"], x["resets"], cfg)
    inverse = np.asarray(gpu._solve(k, g, beta, doc, cfg), np.float64)
    k, g, beta, doc = (np.asarray(a, np.float64) for a in (k, g, beta, doc))
    for head in range(2):
        for start in range(0, length, chunk):
            rows = slice(start, start + chunk)
            kc, gc, bc, dc = k[0, rows, head], g[0, rows, head], beta[0, rows, head], doc[0, rows]
            a = np.zeros((chunk, chunk))
            for i in range(chunk):
                for j in range(i):
                    if dc[i] == dc[j]:
                        a[i, j] = bc[i] * (kc[i] @ kc[j]) * np.exp(gc[j + 1 : i + 1].sum())
            assert rel(inverse[head, rows], np.linalg.inv(np.eye(chunk) + a)) < 1e-5


def test_bfloat16_matmuls():
    """bfloat16 inputs and matmul operands: o in bfloat16, state in float32, both close to float32."""
    x = random_inputs(4, (1, 40, 2, 12, 24), "mixed")
    o_ref, final_ref = naive(x)(*differentiable_args(x))
    x16 = {name: x[name].astype(jnp.bfloat16) if name in ("q", "k", "v") else x[name] for name in x}
    o, final = _kernel(x16, 16, matmul_dtype=jnp.bfloat16)(*differentiable_args(x16))
    assert o.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    assert rel(o, o_ref) < 2e-2
    assert rel(final, final_ref) < 2e-2


def _spec(*shape: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


_BAD_CASES = {
    "key_dim": (dict(k_dim=300), {}, r"head dims up to 256; got K = 300"),
    "value_dim": (dict(v_dim=257), {}, r"head dims up to 256; got V = 257"),
    "q_dtype": (dict(q_dtype=jnp.float16), {}, r"float32 or bfloat16 inputs; q has dtype float16"),
    "beta_dtype": (dict(beta_dtype=jnp.int32), {}, r"float32 or bfloat16 inputs; beta has dtype int32"),
    "chunk": ({}, dict(chunk_size=48), r"chunk_size in \(16, 32, 64\); got 48"),
    "matmul_dtype": ({}, dict(matmul_dtype=jnp.float16), r"matmul_dtype float32 or bfloat16; got float16"),
    "block_v": ({}, dict(block_v=128), r"block_v must be one of \(16, 32, 64\); got 128"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CASES))
def test_bad_input_raises_before_launch(case: str):
    shapes, options, message = _BAD_CASES[case]
    batch, length, heads = 1, 12, 2
    key_dim, value_dim = shapes.get("k_dim", 16), shapes.get("v_dim", 24)
    q = _spec(batch, length, heads, key_dim, dtype=shapes.get("q_dtype", jnp.float32))
    k = _spec(batch, length, heads, key_dim)
    v = _spec(batch, length, heads, value_dim)
    g = _spec(batch, length, heads)
    beta = _spec(batch, length, heads, dtype=shapes.get("beta_dtype", jnp.float32))
    state = _spec(batch, heads, key_dim, value_dim)
    resets = _spec(batch, length, dtype=jnp.bool_)
    kwargs = {"chunk_size": 16, **options}
    chunk_size = kwargs.pop("chunk_size")
    with pytest.raises(ValueError, match=r"^gated_delta_rule: .*" + message):
        gpu.pallas_gpu_gated_delta_rule(q, k, v, g, beta, state, resets, 0.25, chunk_size, **kwargs)


def test_traced_scale_raises_before_launch():
    """The scale is compiled into the kernels: a traced one is refused with a message saying so."""
    x = random_inputs(3, (1, 12, 2, 16, 24), "mixed")

    def run(scale):
        return gpu.pallas_gpu_gated_delta_rule(*differentiable_args(x), x["resets"], scale, 16, interpret=True)

    with pytest.raises(ValueError, match=r"^gated_delta_rule: scale .* must be a Python number"):
        jax.jit(run)(0.25)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the refusal on machines without a GPU")
def test_entry_point_refuses_pallas_gpu_without_a_gpu():
    q = jnp.ones((1, 4, 1, 8))
    gates = jnp.full((1, 4, 1), -0.1)
    with pytest.raises(ValueError, match="impl='pallas_gpu' needs a GPU"):
        gated_delta_rule(q, q, q, gates, gates, impl="pallas_gpu")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_for_cuda(dtype: jnp.dtype):
    """Forward and gradient at the Olmo Hybrid head dims (K = 96, V = 192) lower to Triton for a CUDA GPU on the
    CPU: every kernel in KERNEL_WARPS appears, with its warps (the Triton IR itself is built here)."""
    x = random_inputs(7, (1, 100, 2, 96, 192), "mixed")
    x = {name: x[name].astype(dtype) if name in ("q", "k", "v") else x[name] for name in x}

    def run(q, k, v, g, beta, initial_state):
        return gpu.pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], 96**-0.5, 64, matmul_dtype=dtype
        )

    forward, gradient = lowered_modules(run, x, "cuda")
    launches = lambda text: re.findall(
        r'name = "(gdn_\w+)", num_stages = \d+ : i32, num_warps = (\d+)', text
    )  # noqa: E731
    assert [name for name, _ in launches(forward)] == ["gdn_solve", "gdn_chunk_fwd", "gdn_scan_fwd"]
    everything = launches(forward) + launches(gradient)
    assert {name for name, _ in everything} == set(gpu.KERNEL_WARPS)
    assert all(int(warps) == gpu.KERNEL_WARPS[name] for name, warps in everything)
