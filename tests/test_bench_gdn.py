"""tools/bench_gdn.py on the CPU: its A/B options load and validate before any GPU work; its timer checks outputs."""

from __future__ import annotations

import pathlib
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_tool
from gdn_kernel_cases import differentiable_args, random_inputs, rel
from pallas_kernels import gated_delta_rule
from pallas_kernels.gdn import gpu


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_gdn")


def test_baseline_copy_runs_like_the_kernel(bench, tmp_path: pathlib.Path):
    """A copy of gpu.py given as --baseline is a separate module (own KERNEL_WARPS) computing the same outputs."""
    copy = tmp_path / "gpu_copy.py"
    shutil.copy(gpu.__file__, copy)
    baseline = bench._load_module(str(copy))
    assert baseline is not gpu and baseline.KERNEL_WARPS is not gpu.KERNEL_WARPS
    x = random_inputs(5, (1, 20, 2, 12, 24), "mixed")
    args = (*differentiable_args(x), x["resets"], 12**-0.5, 16)
    o, final = baseline.pallas_gpu_gated_delta_rule(*args, interpret=True)
    o_ref, final_ref = gpu.pallas_gpu_gated_delta_rule(*args, interpret=True)
    assert np.linalg.norm(np.asarray(o)) > 0
    assert rel(o, o_ref) == 0 and rel(final, final_ref) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baseline", "/nonexistent/gpu_old.py"], "--baseline /nonexistent/gpu_old.py: no such file"),
        (["--warps", "gdn_solve=3"], "--warps gdn_solve=3: expected NAME=W"),
        (["--warps", "gdn_nothing=4"], "--warps gdn_nothing=4: expected NAME=W"),
    ],
)
def test_bad_options_are_refused(bench, monkeypatch, argv: list[str], message: str):
    monkeypatch.setattr(sys, "argv", ["bench_gdn.py", "--impls", "none", *argv])
    warps = dict(gpu.KERNEL_WARPS)
    with pytest.raises(SystemExit, match=message):
        bench.main()
    assert gpu.KERNEL_WARPS == warps


def test_warps_override_reaches_the_kernels(bench, monkeypatch):
    """--warps gdn_solve=2 changes the solve kernel's launch (traced, not run: the CPU has no Triton)."""
    monkeypatch.setattr(sys, "argv", ["bench_gdn.py", "--impls", "none", "--shapes", "0", "--warps", "gdn_solve=2"])
    monkeypatch.setitem(gpu.KERNEL_WARPS, "gdn_solve", 4)
    bench.main()
    x = random_inputs(6, (1, 24, 3, 12, 24), "mixed")
    forward = lambda *a: gpu.pallas_gpu_gated_delta_rule(*a, x["resets"], 12**-0.5, 16)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(forward)(*differentiable_args(x)))
    assert re.findall(r"num_warps=(\d+)", jaxpr) == ["2", "4", "4"]  # solve, chunk_fwd, scan_fwd


def test_timer_reports_whether_everything_is_finite(bench):
    """The chunked reference on the CPU at a tiny shape, timed in interleaved rounds next to a variant whose dbeta
    is NaN: both get medians, and only the variant is reported not finite."""
    x = bench._inputs((1, 32, 2, 8, 8), seed=0)

    def chunked(q, k, v, g, beta):
        return gated_delta_rule(q, k, v, g, beta, chunk_size=16, impl="chunked")

    def nan_in_dbeta(q, k, v, g, beta):
        return chunked(q, k, v, g, beta * jnp.sqrt(beta - 2.0))  # beta < 2: NaN values, NaN gradient

    timed = {"chunked": bench._jax_timed(chunked, x), "nan": bench._jax_timed(nan_in_dbeta, x)}
    assert timed["chunked"].finite and not timed["nan"].finite
    calls = {
        (name, kind): (fn, t.sync)
        for name, t in timed.items()
        for kind, fn in enumerate((t.forward, t.forward_backward))
    }
    medians = bench._interleaved_medians(calls, runs=2)
    assert list(medians) == list(calls) and all(ms > 0 for ms in medians.values())


def test_forward_backward_returns_the_outputs_too(bench):
    """The fwd+bwd timer's program returns fn's outputs as well as the gradients, so XLA cannot drop the part of the
    forward that only the outputs need."""
    x = bench._inputs((1, 32, 2, 8, 8), seed=1)
    args = [jnp.asarray(x[n]) for n in bench.GRAD_NAMES]
    fn = lambda q, k, v, g, beta: gated_delta_rule(q, k, v, g, beta, chunk_size=16, impl="chunked")  # noqa: E731
    outputs = fn(*args)
    cotangent = tuple(jnp.ones_like(t) for t in outputs)
    (o, final), grads = jax.jit(lambda *a: bench._forward_backward(fn, cotangent, *a))(*args)
    assert rel(o, outputs[0]) < 1e-6 and rel(final, outputs[1]) < 1e-6 and np.linalg.norm(np.asarray(o)) > 0
    assert len(grads) == len(args)


def _pallas_warps(fn, args) -> dict[str, int]:
    """{pallas_call name: num_warps} of the kernels fn launches (traced afresh, not run)."""
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)  # a new function: make_jaxpr caches traces per function
    return {
        e.params["name"]: e.params["compiler_params"].num_warps for e in jaxpr.eqns if e.primitive.name == "pallas_call"
    }


def test_warps_sweep_traces_each_kernel_at_each_warps(bench, monkeypatch):
    """--sweep-warps: every kernel of gpu.KERNEL_WARPS is traced at 1, 2, 4 and 8 warps within its stage, the other
    kernels of the stage keep their warps, and the table is restored afterwards."""
    stages = bench._stages(bench._inputs((1, 32, 2, 16, 16), seed=2), "float32", 16, interpret=True)
    assert list(stages) == list(gpu.STAGE_KERNELS)
    traced = {}

    def trace_only(fn, args):
        traced[len(traced)] = _pallas_warps(fn, args)
        return lambda: None

    monkeypatch.setattr(bench, "_compiled", trace_only)
    defaults = dict(gpu.KERNEL_WARPS)
    times = bench._warps_sweep(stages, runs=1)
    assert gpu.KERNEL_WARPS == defaults
    assert set(times) == {(kernel, w) for kernel in defaults for w in bench.WARPS}
    expected = []
    for kernels in gpu.STAGE_KERNELS.values():
        for kernel in kernels:
            expected += [{**{k: defaults[k] for k in kernels}, kernel: w} for w in bench.WARPS]
    assert list(traced.values()) == expected


def test_kernel_times_sum_gpu_events_per_call(bench):
    """--profile's trace reader: durations of the GPU processes' complete events summed per kernel name and divided
    by the number of calls; host events, other phases and metadata are left out."""
    trace = {
        "traceEvents": [
            {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0 (stream 3)"}},
            {"ph": "X", "pid": 7, "name": "gdn_solve", "dur": 90.0},
            {"ph": "X", "pid": 7, "name": "gdn_solve", "dur": 94.0},
            {"ph": "X", "pid": 7, "name": "gdn_scan_fwd", "dur": 500.0},
            {"ph": "X", "pid": 1, "name": "PjitFunction", "dur": 4000.0},
            {"ph": "i", "pid": 7, "name": "marker"},
        ]
    }
    assert bench._gpu_kernel_times(trace, runs=2) == {"gdn_solve": 92.0, "gdn_scan_fwd": 250.0}


def test_jax_kernel_times_reads_the_trace_it_records(bench):
    """The jax.profiler trace of real calls is found and read; the CPU has no GPU process, so no kernels."""
    x = jnp.asarray(np.random.default_rng(4).standard_normal((32, 32)), jnp.float32)
    call = jax.jit(lambda a: jnp.sin(a) @ a)
    assert bench._jax_kernel_times(lambda: call(x), runs=2) == {}
