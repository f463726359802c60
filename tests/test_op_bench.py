"""Tests of the op benchmarks' shared parts and of bench_norm's check, on the CPU (their timings need a GPU)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from conftest import load_tool
from pallas_kernels.gated_norm import ops
from pallas_kernels.platform import Backend


@pytest.fixture(scope="module")
def bench_norm():
    return load_tool("bench_norm")


def test_relative_error_and_median_ms():
    op_bench = load_tool("op_bench")
    assert op_bench.relative_error(jnp.array([3.0, 4.0]), jnp.array([3.0, 4.0])) == 0.0
    assert op_bench.relative_error(jnp.array([3.0, 4.5]), jnp.array([3.0, 4.0])) == pytest.approx(0.1)
    calls = []
    times = op_bench.median_ms({"a": lambda: calls.append("a") or jnp.ones(2), "b": lambda: jnp.zeros(2)}, runs=3)
    assert set(times) == {"a", "b"} and all(ms >= 0 for ms in times.values())
    assert len(calls) == 4  # one warm-up, three timed


def test_norm_check_passes_xla_and_fails_a_wrong_implementation(bench_norm, monkeypatch, capsys):
    assert bench_norm.check(["xla"])
    xla = ops.BACKENDS["xla"].run
    monkeypatch.setitem(ops.BACKENDS, "off", Backend(lambda x, g, w, eps: xla(x, g, 1.01 * w, eps)))
    assert not bench_norm.check(["off"])
    assert "FAIL" in capsys.readouterr().out


def test_norm_tilings_parse(bench_norm):
    assert bench_norm.parse_tiling("32/8") == bench_norm.gpu.Tiling(rows=32, warps=8)
    assert bench_norm.parse_tiling("128") == bench_norm.gpu.Tiling(rows=128, warps=4)
