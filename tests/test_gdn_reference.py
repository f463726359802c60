"""Tests of the reference gated delta rule implementations (naive time scan and chunked WY form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gated_delta_rule
from pallas_kernels.gdn import ops

B, H, K, V = 2, 2, 16, 24
CHUNK = 16
IMPLS = ("naive", "chunked")
SCALE = 0.3


def _rel(a: jax.Array, b: jax.Array) -> float:
    """||a - b|| / ||b||, computed in float64 numpy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


MAX_T = 100


@jax.jit
def _draws(seed: int) -> dict[str, jax.Array]:
    """Raw random draws for sequences of up to MAX_T tokens (one compile serves every test)."""
    keys = jax.random.split(jax.random.key(seed), 8)
    return dict(
        q=jax.random.normal(keys[0], (B, MAX_T, H, K)),
        k=jax.random.normal(keys[1], (B, MAX_T, H, K)),
        v=jax.random.normal(keys[2], (B, MAX_T, H, V)),
        gates=jax.random.uniform(keys[3], (3, B, MAX_T, H)),
        beta=jax.random.uniform(keys[4], (B, MAX_T, H), minval=0.0, maxval=2.0),
        initial_state=jax.random.normal(keys[5], (B, H, K, V)),
        starts=jax.random.uniform(keys[6], (B, MAX_T)),
        probe=jax.random.normal(keys[7], (B, MAX_T, H, V)),
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gates(uniforms: np.ndarray, regime: str) -> np.ndarray:
    """Log decays <= 0: "near_zero" in [-1e-3, 0]; "mixed" spans near 0, [-20, 0] and some -1e4."""
    near_zero = -1e-3 * uniforms[0]
    if regime == "near_zero":
        return near_zero
    broad = -20.0 * uniforms[1]
    return np.where(uniforms[2] < 0.45, near_zero, np.where(uniforms[2] < 0.95, broad, -1e4))


def _inputs(seed: int, length: int, regime: str = "mixed") -> dict[str, jax.Array]:
    """q, k (L2-normalised) [B, T, H, K], v [B, T, H, V], g, beta [B, T, H], initial_state."""
    d = {name: np.asarray(x) for name, x in _draws(seed).items()}
    x = dict(
        q=_unit(d["q"][:, :length]),
        k=_unit(d["k"][:, :length]),
        v=d["v"][:, :length],
        g=_gates(d["gates"][:, :, :length], regime),
        beta=d["beta"][:, :length],
        initial_state=d["initial_state"],
    )
    return {name: jnp.asarray(value, jnp.float32) for name, value in x.items()}


def _segment_ids(seed: int, length: int) -> jax.Array:
    """int32 [B, T]: random document starts, plus one at a chunk boundary and a 1-token document."""
    starts = np.asarray(_draws(seed)["starts"][:, :length]) < 0.08
    starts[0, CHUNK : CHUNK + 2] = True
    starts[1, 1] = True
    return jnp.asarray(np.cumsum(starts, axis=1) % 3, jnp.int32)


def _probe(seed: int, length: int) -> jax.Array:
    """A random [B, T, H, V] cotangent."""
    return _draws(seed)["probe"][:, :length]


def _run(impl: str, x: dict[str, jax.Array], **kwargs) -> tuple[jax.Array, jax.Array]:
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    defaults = {"scale": SCALE, "initial_state": x.get("initial_state"), "chunk_size": CHUNK}
    return gated_delta_rule(*args, impl=impl, **{**defaults, **kwargs})


def _numpy_recurrence(x: dict[str, jax.Array], segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 transcription of the recurrence, one (b, h) at a time."""
    q, k, v, g, beta = (np.asarray(x[n], np.float64) for n in ("q", "k", "v", "g", "beta"))
    o = np.zeros(v.shape)
    final = np.zeros((B, H, K, V))
    for b in range(B):
        for h in range(H):
            state = np.asarray(x["initial_state"][b, h], np.float64)
            for t in range(q.shape[1]):
                if t > 0 and segment_ids[b, t] != segment_ids[b, t - 1]:
                    state = np.zeros_like(state)
                state = np.exp(g[b, t, h]) * state
                correction = beta[b, t, h] * (v[b, t, h] - state.T @ k[b, t, h])
                state = state + np.outer(k[b, t, h], correction)
                o[b, t, h] = state.T @ (K**-0.5 * q[b, t, h])
            final[b, h] = state
    return o, final


def test_naive_matches_independent_numpy_loop():
    x = _inputs(0, 37)
    segment_ids = _segment_ids(10, 37)
    o, final = gated_delta_rule(
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
        initial_state=x["initial_state"],
        segment_ids=segment_ids,
        impl="naive",
    )  # default scale K ** -0.5
    o_ref, final_ref = _numpy_recurrence(x, np.asarray(segment_ids))
    assert _rel(o, o_ref) < 1e-5
    assert _rel(final, final_ref) < 1e-5


@pytest.mark.parametrize("length", [37, 100])
@pytest.mark.parametrize("regime", ["near_zero", "mixed"])
@pytest.mark.parametrize("with_segments", [False, True])
def test_chunked_matches_naive(length: int, regime: str, with_segments: bool):
    x = _inputs(1, length, regime)
    segment_ids = _segment_ids(11, length) if with_segments else None
    o_naive, s_naive = _run("naive", x, segment_ids=segment_ids)
    o_chunked, s_chunked = _run("chunked", x, segment_ids=segment_ids)
    assert o_chunked.shape == (B, length, H, V) and o_chunked.dtype == jnp.float32
    assert s_chunked.shape == (B, H, K, V) and s_chunked.dtype == jnp.float32
    assert _rel(o_chunked, o_naive) < 1e-5
    assert _rel(s_chunked, s_naive) < 1e-5
    o_auto, s_auto = _run("auto", x, segment_ids=segment_ids)
    np.testing.assert_array_equal(o_auto, o_chunked)
    np.testing.assert_array_equal(s_auto, s_chunked)


def test_defaults_without_state_or_segments():
    x = _inputs(2, 37)
    del x["initial_state"]
    o_naive, s_naive = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], impl="naive")
    o_chunked, s_chunked = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=CHUNK)
    assert _rel(o_chunked, o_naive) < 1e-5
    assert _rel(s_chunked, s_naive) < 1e-5


def test_gradients_match():
    # Both gradients are exact autodiff of float32 programs that differ only in summation order;
    # the measured relative differences are ~3e-7, so the forward bound of 1e-5 is kept.
    length = 37
    x = _inputs(3, length)
    segment_ids = _segment_ids(12, length)
    probe_o = _probe(13, length)
    probe_state = _inputs(13, length)["initial_state"]
    names = ("q", "k", "v", "g", "beta", "initial_state")

    def grads(impl: str) -> tuple[jax.Array, ...]:
        def functional(*args: jax.Array) -> jax.Array:
            o, final = gated_delta_rule(
                *args[:5],
                scale=SCALE,
                initial_state=args[5],
                segment_ids=segment_ids,
                chunk_size=CHUNK,
                impl=impl,
            )
            return jnp.sum(o * probe_o) + jnp.sum(final * probe_state)

        return jax.jit(jax.grad(functional, argnums=tuple(range(6))))(*(x[n] for n in names))

    for name, d_naive, d_chunked in zip(names, grads("naive"), grads("chunked")):
        assert np.all(np.isfinite(d_chunked)), name
        assert np.linalg.norm(d_naive) > 0, name
        assert _rel(d_chunked, d_naive) < 1e-5, name


def test_float64_oracle():
    length = 37
    x32 = _inputs(4, length)
    segment_ids = _segment_ids(14, length)
    results32 = {impl: _run(impl, x32, segment_ids=segment_ids) for impl in IMPLS}
    x64_numpy = {name: np.asarray(value, np.float64) for name, value in x32.items()}
    with jax.enable_x64(True):
        x64 = {name: jnp.asarray(value) for name, value in x64_numpy.items()}
        o64, s64 = _run("naive", x64, segment_ids=segment_ids)
        o64_chunked, s64_chunked = _run("chunked", x64, segment_ids=segment_ids)
        assert o64.dtype == jnp.float64 and s64.dtype == jnp.float64
        assert o64_chunked.dtype == jnp.float64 and s64_chunked.dtype == jnp.float64
        o64, s64 = np.asarray(o64), np.asarray(s64)
        # In float64 the two algorithms agree to rounding: this checks the chunked algebra exactly.
        assert _rel(o64_chunked, o64) < 1e-12
        assert _rel(s64_chunked, s64) < 1e-12
    for impl, (o32, s32) in results32.items():
        assert _rel(o32, o64) < 1e-5, impl
        assert _rel(s32, s64) < 1e-5, impl


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_documents_equal_separate_runs(impl: str):
    lengths = ((16, 1, 20), (1, 20, 16))  # document lengths per batch row, T = 37
    ids = ((4, 5, 4), (7, 3, 7))  # non-adjacent documents may reuse an id
    x = _inputs(5, sum(lengths[0]), "near_zero")
    segment_ids = jnp.asarray([np.repeat(i, n) for i, n in zip(ids, lengths)], jnp.int32)
    o_packed, s_packed = _run(impl, x, segment_ids=segment_ids)
    for b, row in enumerate(lengths):
        offsets = np.cumsum((0, *row))
        outputs = []
        for d, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
            doc = {n: x[n][b : b + 1, start:stop] for n in ("q", "k", "v", "g", "beta")}
            doc["initial_state"] = x["initial_state"][b : b + 1] if d == 0 else None
            o_doc, s_doc = _run(impl, doc)
            outputs.append(o_doc[0])
        assert _rel(o_packed[b], jnp.concatenate(outputs)) < 1e-5
        assert _rel(s_packed[b], s_doc[0]) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_two_halves_equal_whole(impl: str):
    length, split = 37, 20
    x = _inputs(6, length)
    # A document boundary inside each half; one exactly at the split would be invisible to the
    # second call (token 0 of a call never starts a new document).
    segment_ids = jnp.asarray(np.repeat([[0, 1, 2], [5, 6, 7]], [10, 18, 9], axis=1), jnp.int32)
    o_whole, s_whole = _run(impl, x, segment_ids=segment_ids)
    first = {n: x[n][:, :split] for n in ("q", "k", "v", "g", "beta")}
    second = {n: x[n][:, split:] for n in ("q", "k", "v", "g", "beta")}
    o_first, s_first = _run(impl, {**first, "initial_state": x["initial_state"]}, segment_ids=segment_ids[:, :split])
    o_second, s_second = _run(impl, {**second, "initial_state": s_first}, segment_ids=segment_ids[:, split:])
    assert _rel(jnp.concatenate([o_first, o_second], axis=1), o_whole) < 1e-5
    assert _rel(s_second, s_whole) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs(impl: str):
    x = _inputs(7, 37, "near_zero")
    o32, s32 = _run(impl, x)
    x16 = {n: value.astype(jnp.bfloat16) for n, value in x.items()}
    o16, s16 = _run(impl, x16)
    assert o16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
    assert _rel(o16, o32) < 2e-2
    assert _rel(s16, s32) < 2e-2


def _spec(*shape: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


# Shape-only stand-ins (T = 12): the checks must reject them from shapes and dtypes alone,
# before any array is touched.
_GOOD = dict(
    q=_spec(B, 12, H, K),
    k=_spec(B, 12, H, K),
    v=_spec(B, 12, H, V),
    g=_spec(B, 12, H),
    beta=_spec(B, 12, H),
    initial_state=_spec(B, H, K, V),
)
_BAD_CASES = {
    "q_rank": ({"q": _spec(B, 12, H)}, r"q has shape \(2, 12, 2\); expected q \[B, T, H, K\]"),
    "k_shape": ({"k": _spec(B, 12, H, K + 1)}, r"k has shape \(2, 12, 2, 17\) but q is \(2, 12, 2, 16\)"),
    "v_time": (
        {"v": _spec(B, 10, H, V)},
        r"v has shape \(2, 10, 2, 24\) but q is \(2, 12, 2, 16\); expected v \[B, T, H, V\] "
        r"with B, T, H = 2, 12, 2$",
    ),
    "v_rank": ({"v": _spec(B, 12, H)}, r"v has shape \(2, 12, 2\) but q is"),
    "g_shape": ({"g": _spec(B, 12)}, r"g has shape \(2, 12\) but q is .* expected g \[B, T, H\]"),
    "beta_shape": ({"beta": _spec(B, 12, H, 1)}, r"beta has shape \(2, 12, 2, 1\)"),
    "state_shape": (
        {"initial_state": _spec(B, H, V, K)},
        r"initial_state has shape \(2, 2, 24, 16\) .* = \(2, 2, 16, 24\)$",
    ),
    "segment_shape": ({"segment_ids": _spec(B, 11, dtype=jnp.int32)}, r"segment_ids has shape \(2, 11\)"),
    "segment_dtype": ({"segment_ids": _spec(B, 12)}, r"segment_ids has dtype float32; expected an integer"),
    "integer_q": ({"q": _spec(B, 12, H, K, dtype=jnp.int32)}, r"q has dtype int32"),
    "impl": ({"impl": "fast"}, r"unknown impl 'fast'"),
    "chunk_zero": ({"chunk_size": 0}, r"chunk_size must be a positive int, got 0$"),
    "chunk_negative": ({"chunk_size": -16}, r"chunk_size must be a positive int, got -16$"),
    "chunk_float": ({"chunk_size": 16.0}, r"chunk_size must be a positive int, got 16.0$"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CASES))
def test_bad_input_raises(case: str):
    changes, message = _BAD_CASES[case]
    x = {**_GOOD, **changes}
    args = [x.pop(name) for name in ("q", "k", "v", "g", "beta")]
    with pytest.raises(ValueError, match=r"^gated_delta_rule: " + message):
        gated_delta_rule(*args, **x)


@pytest.mark.parametrize(
    "backend, key_dim, value_dim, chunk, dtype, expected",
    [
        ("cpu", 96, 192, 64, np.float32, "chunked"),
        ("gpu", 96, 192, 64, np.float32, "pallas_gpu"),
        ("tpu", 128, 256, 16, np.float32, "pallas_tpu"),
        ("gpu", 300, 192, 64, np.float32, "chunked"),  # K above the kernels' maximum
        ("gpu", 96, 192, 128, np.float32, "chunked"),  # a chunk size the kernels do not take
        ("gpu", 96, 192, 64, np.float64, "chunked"),  # float64 stays on the reference
        ("tpu", 96, 192, 64, np.float32, "pallas_tpu"),  # the limits the TPU backend declares: chunk 64 ...
        ("tpu", 257, 8, 16, np.float32, "chunked"),  # ... K up to 256 ...
        ("tpu", 96, 192, 64, np.float64, "chunked"),  # ... and float32
    ],
)
def test_auto_picks_the_platform_kernel_where_it_applies(
    monkeypatch, backend, key_dim, value_dim, chunk, dtype, expected
):
    monkeypatch.setattr(ops.jax, "default_backend", lambda: backend)
    assert ops.resolve_impl("auto", key_dim, value_dim, chunk, np.dtype(dtype)) == expected
    assert ops.resolve_impl("naive", key_dim, value_dim, chunk, np.dtype(dtype)) == "naive"
