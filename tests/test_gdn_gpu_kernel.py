"""Tests of the Pallas GPU gated delta rule kernels: with the Pallas interpreter on the CPU, and compiled on a GPU.

Every kernel runs with ``interpret=True`` against the naive time-step scan, on tiny shapes: T not a multiple of the
chunk, K and V not multiples of 16 (so K, V and T are all padded), several value tiles, initial state, document
resets, beta in [0, 2] and gates near 0, in [-20, 0] and -1e4. Gradients are checked at every chunk size, at
chunk 64 with the key blocking of K = 96 (three 32-wide key blocks, state parts 64 + 32) and of K = 128 (two
64-wide blocks, one state part), and with bfloat16 inputs and matmuls. The forward and the gradient are also lowered
to Triton for a CUDA GPU at the Olmo Hybrid head dims (the CPU builds the Triton IR).

Tests marked ``gpu`` run the compiled kernels (``pytest -m gpu tests/test_gdn_gpu_kernel.py`` on a GPU machine; they
are skipped elsewhere): the interpreter's gradient cases and larger shapes up to K = V = 256, in float32 and
bfloat16, at the default value tile and at 64.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdn_kernel_cases import (
    BOUNDS,
    Case,
    check_against_naive,
    differentiable_args,
    lowered_modules,
    naive,
    random_inputs,
    rel,
    with_dtype,
)
from pallas_kernels import gated_delta_rule
from pallas_kernels.gdn import gpu


def _kernel(x: dict[str, jax.Array], chunk: int, interpret: bool = True, **options) -> Callable:
    """(q, k, v, g, beta, initial_state) -> (o, final) through the kernels, in the interpreter or compiled."""
    scale = x["q"].shape[-1] ** -0.5

    def run(q, k, v, g, beta, initial_state):
        return gpu.pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, initial_state, x["resets"], scale, chunk, interpret=interpret, **options
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
    an H100 with 2 stages, and 3 stages at the Olmo Hybrid shape (180 programs) left room for one program per SM.
    Where 2 stages fit only a whole SM, they take it (the forward scan at the 1B hybrid's batch of 8)."""

    def stages(heads: int, key_dim: int, value_dim: int, block_v: int, dtype, forward: bool = False) -> int:
        q, v = (jax.ShapeDtypeStruct((1, 64, heads, d), dtype) for d in (key_dim, value_dim))
        cfg = gpu._make_config(q, v, {}, 64, False, dtype, block_v, 1.0)
        step_bytes = (3 * cfg.key_width + (2 if forward else 1) * cfg.block_v) * cfg.chunk * cfg.matmul_dtype.itemsize
        return gpu._scan_stages(step_bytes, heads * cfg.num_v_blocks, cfg)

    assert stages(16, 256, 256, 64, jnp.bfloat16) == 1
    assert stages(16, 256, 256, 32, jnp.bfloat16) == 2
    assert stages(16, 96, 192, 32, jnp.bfloat16) == 3  # 96 programs: one per SM
    assert stages(30, 96, 192, 32, jnp.bfloat16) == 2  # 180 programs: two share an SM
    assert stages(30, 96, 192, 32, jnp.bfloat16, forward=True) == 2
    assert stages(128, 96, 192, 64, jnp.bfloat16) == 2  # 384 programs, two to an SM
    assert stages(128, 96, 192, 64, jnp.bfloat16, forward=True) == 2  # 384 programs, one to an SM
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


# T is never a multiple of the chunk. K = 72 (padded to 80) is stepped in five 16-wide key blocks; V = 40 at
# block_v = 16 is three value tiles. At chunk 64 (the model's): K = 96 and K = 128 key blocking, in float32 and
# bfloat16, with large gates and many documents ("mixed") and with the state and pairs reaching across whole chunks
# ("long"); the slow case adds batch rows, heads, four chunks and three value tiles.
GRADIENT_CASES = {
    "c16_tiles": Case((1, 40, 2, 12, 40), 16, block_v=16),
    "c32_two_key_blocks": Case((1, 40, 1, 72, 16), 32, "extreme"),
    "c64_k96": Case((1, 100, 1, 96, 16), 64),
    "c64_k128_long": Case((1, 100, 1, 128, 16), 64, "long"),
    "c64_k96_bfloat16_long": Case((1, 100, 1, 96, 16), 64, "long", jnp.bfloat16),
}
SLOW_GRADIENT_CASES = {"c64_k128_bfloat16_tiles": Case((2, 200, 2, 128, 48), 64, dtype=jnp.bfloat16, block_v=16)}


def _gpu_cases() -> dict[str, Case]:
    """The cases of the compiled kernels on a GPU: the interpreter's, and at chunk 64 the Olmo Hybrid head dims, the
    largest head dims and head dims that are not powers of two, in both gate regimes, float32 and bfloat16, at the
    default value tile and at 64."""
    cases = {**GRADIENT_CASES, **SLOW_GRADIENT_CASES}
    shapes = ((2, 300, 3, 96, 192), (1, 130, 1, 256, 256), (1, 77, 2, 24, 40))
    options = itertools.product(shapes, ("mixed", "long"), ("float32", "bfloat16"), (None, 64))
    for shape, regime, dtype, block_v in options:
        name = f"{'_'.join(map(str, shape))}_{regime}_{dtype}_bv{block_v or 'auto'}"
        cases[name] = Case(shape, 64, regime, jnp.dtype(dtype), block_v)
    return cases


GPU_CASES = _gpu_cases()


def _check_kernel(case: Case, interpret: bool) -> None:
    """The kernels' o, final state and six gradients against the float64 recurrence, within BOUNDS[case.dtype]; o in
    the inputs' dtype and the final state in float32."""
    x = with_dtype(random_inputs(2, case.shape, case.regime), case.dtype)
    fn = _kernel(x, case.chunk, interpret, matmul_dtype=case.dtype, block_v=case.block_v)
    o, final = jax.eval_shape(fn, *differentiable_args(x))
    assert o.dtype == case.dtype and final.dtype == jnp.float32
    check_against_naive(fn, x, BOUNDS[np.dtype(case.dtype)], seed=3)


@pytest.mark.parametrize(
    "case",
    [*GRADIENT_CASES, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_GRADIENT_CASES)],
)
def test_gradients_match_naive(case: str):
    _check_kernel({**GRADIENT_CASES, **SLOW_GRADIENT_CASES}[case], interpret=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_compiled_kernels_match_naive(case: str):
    _check_kernel(GPU_CASES[case], interpret=False)


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


def test_kernel_stages_are_the_custom_vjp():
    """``gpu.kernel_stages`` runs the stages of STAGE_KERNELS in order, and on the same inputs and cotangents they
    give the outputs and the gradients of ``pallas_gpu_gated_delta_rule`` (T, K and V come back padded)."""
    batch, length, heads, key_dim, value_dim = shape = (1, 20, 2, 12, 20)
    x = random_inputs(9, shape, "mixed")
    args = differentiable_args(x)
    (o, final), pullback = jax.vjp(_kernel(x, 16), *args)
    rng = np.random.default_rng(10)
    do, dfinal = (jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (o, final))
    dq, dk, dv, dg, dbeta, dh0 = pullback((do, dfinal))
    stages = gpu.kernel_stages(*args, x["resets"], key_dim**-0.5, 16, do, dfinal, interpret=True)
    assert list(stages) == list(gpu.STAGE_KERNELS)
    o_stage, final_stage, *_ = stages["scan_fwd"].call()
    *_, dh0_stage = stages["scan_bwd"].call()
    dv_stage = stages["value_pairs_bwd"].call()[0]
    dq_stage, dk_stage, *_ = stages["contract_finish_bwd"].call()
    dg_stage, dbeta_stage = stages["gates_bwd"].call()
    state = lambda s: s.reshape(batch, heads, *s.shape[1:])[..., :key_dim, :value_dim]  # noqa: E731
    pairs = [
        (o_stage[:, :length, :, :value_dim], o),
        (state(final_stage), final),
        (dq_stage[:, :length, :, :key_dim], dq),
        (dk_stage[:, :length, :, :key_dim], dk),
        (dv_stage[:, :length, :, :value_dim], dv),
        (dg_stage[:, :length], dg),
        (dbeta_stage[:, :length], dbeta),
        (state(dh0_stage), dh0),
    ]
    for stage, reference in pairs:
        assert rel(stage, reference) < 1e-6


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
