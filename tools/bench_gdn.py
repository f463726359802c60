"""Times the gated delta rule: our Pallas GPU kernel, the plain-jnp chunked reference, and flash-linear-attention.

Run on a CUDA machine from the repository root:

    python tools/bench_gdn.py                        # SHAPES: Olmo Hybrid 7B, two research shapes, T = 65,536,
                                                     # and the 1B hybrid's layer at batch 8
    python tools/bench_gdn.py --shapes 0 --stages    # also the time of every kernel of the Pallas forward/backward
    python tools/bench_gdn.py --shapes 0 --profile   # GPU time of every kernel of each fwd+bwd (profiler clocks)
    python tools/bench_gdn.py --shapes 0 --impls none --sweep-warps   # each kernel at 1, 2, 4 and 8 warps
    python tools/bench_gdn.py --write BENCHMARKS.md  # append the table to BENCHMARKS.md

    git show REV:pallas_kernels/gdn/gpu.py > gpu_before.py                         # A/B against another revision,
    python tools/bench_gdn.py --shapes 0 --impls pallas --baseline gpu_before.py   # timed in the same process

    cp pallas_kernels/gdn/gpu.py gpu_now.py                                        # A/B of a kernel's warps
    python tools/bench_gdn.py --shapes 0 --impls pallas --warps gdn_solve=2 --baseline gpu_now.py

Every implementation gets the same inputs: bfloat16 q, k (L2-normalised), v and float32 g (log-sigmoid of a
normal, so gates near 0 and below), beta in [0, 1], no initial state, chunk 64 (``--chunk`` changes ours and the
jnp reference's). "fwd" is the output and the final state; "fwd+bwd" is the forward plus the gradients of q, k, v,
g and beta; "finite" says whether all of them came out finite. Each number is the median over ``--runs`` timed
calls (host clock around a synchronised call, after warm-up). All implementations of a shape are compiled first
and then timed in rounds that call each of them once, so the rows of one run compare directly even when the card's
speed drifts during the run. flash-linear-attention (PyTorch + Triton) is timed when ``fla`` imports; its Hopper
guard against a Triton bug in the gated backward is bypassed, so its backward is a speed anchor only.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import functools
import glob
import gzip
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pallas_kernels.gdn import gpu  # noqa: E402
from pallas_kernels.gdn.ops import gated_delta_rule  # noqa: E402

SHAPES = (
    (1, 8192, 30, 96, 192),
    (4, 4096, 16, 128, 128),
    (2, 8192, 16, 128, 256),
    (1, 65536, 16, 128, 128),
    (8, 8192, 16, 96, 192),
)
CHUNK = 64
GRAD_NAMES = ("q", "k", "v", "g", "beta")
FLA = "flash-linear-attention"  # its row label


def _inputs(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Random float32 numpy inputs: q, k (unit rows), v [B, T, H, K|V]; g, beta [B, T, H]."""
    batch, length, heads, key_dim, value_dim = shape
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return dict(
        q=unit(rng.standard_normal((batch, length, heads, key_dim), np.float32)),
        k=unit(rng.standard_normal((batch, length, heads, key_dim), np.float32)),
        v=rng.standard_normal((batch, length, heads, value_dim), np.float32),
        g=np.log(1.0 / (1.0 + np.exp(-(rng.standard_normal((batch, length, heads), np.float32) + 3.0)))),
        beta=rng.uniform(0.0, 1.0, (batch, length, heads)).astype(np.float32),
    )


def _call_ms(fn: Callable[[], object], sync: Callable[[object], object]) -> float:
    """Milliseconds of one synchronised call."""
    start = time.perf_counter()
    sync(fn())
    return 1e3 * (time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class _Timed:
    """One implementation, compiled and checked: its forward and its forward+backward as argument-less calls."""

    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    sync: Callable[[object], object]
    finite: bool  # whether the outputs and all gradients came out finite
    kernel_times: Callable[[int], dict[str, float]]  # runs -> {kernel: GPU us per fwd+bwd call}, from a profiler


def _interleaved_medians(calls: dict[Hashable, tuple[Callable[[], object], Callable]], runs: int) -> dict:
    """Median ms of each (call, sync) in ``calls``, timed in ``runs`` rounds that make every call once, so a drift
    of the card's clocks during the run affects all of them alike."""
    for fn, sync in calls.values():  # warm-up
        for _ in range(3):
            sync(fn())
    times = {key: [] for key in calls}
    for _ in range(runs):
        for key, (fn, sync) in calls.items():
            times[key].append(_call_ms(fn, sync))
    return {key: statistics.median(t) for key, t in times.items()}


def _jax_timed(fn: Callable, x: dict[str, np.ndarray]) -> _Timed:
    """fn(q, k, v, g, beta) -> (o, final) on bf16 q, k, v, compiled."""
    args = [jnp.asarray(x[n], jnp.bfloat16 if n in ("q", "k", "v") else jnp.float32) for n in GRAD_NAMES]
    forward = jax.jit(fn)
    o, final = forward(*args)
    rng = np.random.default_rng(7)
    cotangent = (
        jnp.asarray(rng.standard_normal(o.shape), o.dtype),
        jnp.asarray(rng.standard_normal(final.shape), final.dtype),
    )
    forward_backward = jax.jit(functools.partial(_forward_backward, fn, cotangent))
    finite = all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree.leaves(forward_backward(*args)))
    call = lambda: forward_backward(*args)  # noqa: E731
    kernel_times = functools.partial(_jax_kernel_times, call)
    return _Timed(lambda: forward(*args), call, jax.block_until_ready, finite, kernel_times)


def _jax_kernel_times(call: Callable[[], object], runs: int) -> dict[str, float]:
    """GPU microseconds per call of each kernel ``call`` launches, from a jax.profiler trace of ``runs`` calls."""
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(call())
        (path,) = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            return _gpu_kernel_times(json.load(f), runs)


def _gpu_kernel_times(trace: dict | list, runs: int) -> dict[str, float]:
    """{kernel name: summed duration / runs} over the complete ("X") events of the trace's GPU processes (a Perfetto
    JSON trace as jax.profiler writes it: durations in microseconds, processes named "/device:GPU:n ...")."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpu_processes = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and "/device:GPU" in e["args"]["name"]
    }
    totals = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e["pid"] in gpu_processes:
            totals[e["name"]] += e["dur"] / runs
    return dict(totals)


def _forward_backward(fn: Callable, cotangent: tuple[jax.Array, ...], *args: jax.Array) -> tuple:
    """(fn's outputs, the gradients of its arguments). Returning the outputs keeps the whole forward in the
    compiled program: with the gradients alone XLA drops the kernels whose results only the outputs need (our
    forward scan), which a training step cannot."""
    outputs, pullback = jax.vjp(fn, *args)
    return outputs, pullback(cotangent)


def _load_module(path: str) -> ModuleType:
    """Imports a copy of ``pallas_kernels/gdn/gpu.py`` (e.g. from another commit) from ``path``."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --baseline {path}: no such file")
    name = "baseline_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _pallas(matmul_dtype: str, module: ModuleType = gpu, block_v: int | None = None, chunk: int = CHUNK) -> Callable:
    def run(q, k, v, g, beta):
        batch, length, heads, key_dim = q.shape
        state = jnp.zeros((batch, heads, key_dim, v.shape[-1]), jnp.float32)
        resets = jnp.zeros((batch, length), bool)
        return module.pallas_gpu_gated_delta_rule(
            q, k, v, g, beta, state, resets, key_dim**-0.5, chunk, matmul_dtype=matmul_dtype, block_v=block_v
        )

    return run


def _chunked(chunk: int) -> Callable:
    return lambda q, k, v, g, beta: gated_delta_rule(q, k, v, g, beta, chunk_size=chunk, impl="chunked")


def _fla_timed(x: dict[str, np.ndarray]) -> _Timed:
    """flash-linear-attention's chunk_gated_delta_rule on the same inputs (its Triton autotuning runs here)."""
    import torch
    from fla.ops.common import chunk_o
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    chunk_o.TRITON_ABOVE_3_7_1 = True  # lets its gated backward run on Hopper (timing only)
    tensors = {
        n: torch.tensor(x[n], device="cuda", dtype=torch.bfloat16 if n in ("q", "k", "v") else torch.float32)
        for n in GRAD_NAMES
    }
    for t in tensors.values():
        t.requires_grad_(True)
    sync = lambda _: torch.cuda.synchronize()  # noqa: E731

    def forward():
        with torch.no_grad():
            return chunk_gated_delta_rule(**tensors, output_final_state=True)

    o, final = forward()
    do, dfinal = torch.randn_like(o), torch.randn_like(final)

    def forward_backward():
        o, final = chunk_gated_delta_rule(**tensors, output_final_state=True)
        return torch.autograd.grad((o, final), list(tensors.values()), (do, dfinal))

    finite = all(bool(torch.isfinite(t).all()) for t in (o, final, *forward_backward()))
    return _Timed(forward, forward_backward, sync, finite, functools.partial(_torch_kernel_times, forward_backward))


def _torch_kernel_times(call: Callable[[], object], runs: int) -> dict[str, float]:
    """GPU microseconds per call of each CUDA kernel ``call`` launches, from torch.profiler over ``runs`` calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            call()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / runs for e in prof.key_averages() if e.device_time_total > 0}


def _compile_or_report(label: str, name: str, build: Callable[[], _Timed]) -> _Timed | None:
    """build(), or None after printing why it failed (the other implementations still run)."""
    try:
        return build()
    except Exception as error:
        print(f"{label:<24} {name:<28} FAILED: {str(error).splitlines()[0][:300]}", flush=True)
        return None


def _fla_available() -> bool:
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


WARPS = (1, 2, 4, 8)


def _stages(x: dict[str, np.ndarray], matmul_dtype: str, chunk: int, interpret: bool = False) -> dict[str, gpu.Stage]:
    """``gpu.kernel_stages`` on the benchmark's inputs (bfloat16 q, k, v; no initial state or documents; a random
    bfloat16 dO and dfinal of ones), each stage compiled with the warps in gpu.KERNEL_WARPS at this moment
    (``interpret``: run by the Pallas interpreter, for CPU tests)."""
    batch, length, heads, key_dim = x["q"].shape
    q, k, v = (jnp.asarray(x[n], jnp.bfloat16) for n in ("q", "k", "v"))
    state = jnp.zeros((batch, heads, key_dim, v.shape[-1]), jnp.float32)
    do = jnp.asarray(np.random.default_rng(3).standard_normal(v.shape), jnp.bfloat16)
    return gpu.kernel_stages(
        q,
        k,
        v,
        jnp.asarray(x["g"]),
        jnp.asarray(x["beta"]),
        state,
        jnp.zeros((batch, length), bool),
        key_dim**-0.5,
        chunk,
        do,
        jnp.ones_like(state),
        interpret=interpret,
        matmul_dtype=matmul_dtype,
    )


def _compiled(fn: Callable, args: tuple) -> Callable[[], object]:
    """fn(*args) jitted afresh (traced with the current gpu.KERNEL_WARPS), as an argument-less call."""
    call = jax.jit(lambda *a: fn(*a))
    call(*args)
    return lambda: call(*args)


def _stage_times(stages: dict[str, gpu.Stage], runs: int) -> dict[str, float]:
    """Median ms of each stage, timed in interleaved rounds."""
    return _interleaved_medians({name: (call, jax.block_until_ready) for name, (_, _, call) in stages.items()}, runs)


def _warps_sweep(stages: dict[str, gpu.Stage], runs: int) -> dict[tuple[str, int], float]:
    """Median ms of the stage holding each kernel with that kernel at each of WARPS warps (the other kernels as in
    gpu.KERNEL_WARPS), keyed (kernel, warps), all timed in interleaved rounds."""
    calls = {}
    for stage, kernels in gpu.STAGE_KERNELS.items():
        fn, args, _ = stages[stage]
        for kernel in kernels:
            default = gpu.KERNEL_WARPS[kernel]
            try:
                for warps in WARPS:
                    gpu.KERNEL_WARPS[kernel] = warps
                    calls[kernel, warps] = (_compiled(fn, args), jax.block_until_ready)
            finally:
                gpu.KERNEL_WARPS[kernel] = default
    return _interleaved_medians(calls, runs)


def _profile_rows(label: str, name: str, timed: _Timed, runs: int) -> list[str]:
    """Prints the GPU time of every kernel of ``timed``'s fwd+bwd above 1% of the total and returns them as table
    rows (and the total)."""
    kernels = sorted(timed.kernel_times(runs).items(), key=lambda item: -item[1])
    total = sum(us for _, us in kernels)
    print(f"{label:<24} {name}: GPU us per fwd+bwd {total:.1f} (kernels above 1%):", flush=True)
    rows = []
    for kernel, us in (item for item in kernels if item[1] >= 0.01 * total):
        print(f"{'':<26}{us:9.1f}  {kernel[:100]}")
        rows.append(f"| {label} | {name} | {kernel[:100]} | {us:.1f} |")
    return rows + [f"| {label} | {name} | all kernels | {total:.1f} |"]


def _open_table(path: str | None, card: str) -> Callable[[str], None]:
    """Starts a dated section in ``path`` (if given) and returns a function that appends one line to it.

    Rows are written as they are measured, so a run cut short still leaves its numbers.
    """
    if path is None:
        return lambda line: None
    command = "python tools/bench_gdn.py " + " ".join(sys.argv[1:])
    with open(path, "a") as f:
        f.write(f"\n## Gated delta rule, {datetime.date.today()}, {card}, jax {jax.__version__}\n\n`{command}`\n\n")
        f.write("| shape B,T,H,K,V | impl | fwd ms | fwd+bwd ms | outputs and gradients finite |\n")
        f.write("|---|---|---|---|---|\n")

    def append(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return append


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="0,1,2,3", help="indices into SHAPES, comma-separated")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=CHUNK, help="chunk size of our kernel and the jnp reference")
    parser.add_argument(
        "--impls",
        default="pallas,chunked,fla",
        help="comma-separated subset of pallas,chunked,fla; none times only --stages or --sweep-warps",
    )
    parser.add_argument("--matmul-dtype", default="bfloat16", help="the Pallas kernel's matmul_dtype")
    parser.add_argument(
        "--block-v", default="", help="also time the Pallas kernel with these value tiles (comma-separated: 16,32,64)"
    )
    parser.add_argument("--stages", action="store_true", help="also time each stage of the Pallas kernel on its own")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also the GPU time of every kernel of each implementation's fwd+bwd (jax.profiler / torch.profiler)",
    )
    parser.add_argument(
        "--sweep-warps",
        action="store_true",
        help=f"also time the stage holding each Pallas kernel with that kernel at {WARPS} warps",
    )
    parser.add_argument("--write", default=None, help="append the table, with date, card and command, to this file")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a copy of pallas_kernels/gdn/gpu.py from another revision (git show REV:pallas_kernels/gdn/gpu.py > "
        "FILE), timed in the same run as the current kernel; may be repeated",
    )
    parser.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache (reruns skip compiling)")
    parser.add_argument(
        "--warps",
        default="",
        help="warps for some of our kernels, e.g. gdn_solve=2,gdn_scan_fwd=8 (names in gpu.KERNEL_WARPS); with a "
        "--baseline copy of the unchanged module this is an A/B of the setting",
    )
    args = parser.parse_args()
    for setting in (s for s in args.warps.split(",") if s):
        name, _, warps = setting.partition("=")
        if name not in gpu.KERNEL_WARPS or warps not in ("1", "2", "4", "8", "16"):
            raise SystemExit(f"error: --warps {setting}: expected NAME=W, NAME in {sorted(gpu.KERNEL_WARPS)}, W 1-16")
        gpu.KERNEL_WARPS[name] = int(warps)
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    baselines = {os.path.basename(path): _load_module(path) for path in args.baseline}
    impls = args.impls.split(",")
    card = jax.devices()[0].device_kind
    append = _open_table(args.write, card)
    print(
        f"device {card}, jax {jax.__version__}; median ms over {args.runs} runs; bf16 q, k, v; chunk {args.chunk} "
        "(flash-linear-attention: 64)"
    )
    profiles = []
    torch_profiles = []  # profiled after every JAX one: once torch.profiler has run, jax.profiler cannot trace the GPU
    for index in (int(i) for i in args.shapes.split(",")):
        shape = SHAPES[index]
        x = _inputs(shape, 100 + index)
        label = ",".join(map(str, shape))
        builders = {}
        if "pallas" in impls:
            builders[f"pallas_gpu ({args.matmul_dtype} matmul)"] = _pallas(args.matmul_dtype, chunk=args.chunk)
            for block_v in (int(b) for b in args.block_v.split(",") if b):
                name = f"pallas_gpu ({args.matmul_dtype} matmul, block_v {block_v})"
                builders[name] = _pallas(args.matmul_dtype, block_v=block_v, chunk=args.chunk)
            for file, module in baselines.items():
                builders[f"pallas_gpu {file}"] = _pallas(args.matmul_dtype, module, chunk=args.chunk)
        if "chunked" in impls and shape[1] <= 8192:
            builders["chunked (jnp, XLA)"] = _chunked(args.chunk)
        timed = {}
        for name, fn in builders.items():
            timed[name] = _compile_or_report(label, name, lambda: _jax_timed(fn, x))
        if "fla" in impls and _fla_available():
            timed[FLA] = _compile_or_report(label, FLA, lambda: _fla_timed(x))
        timed = {name: t for name, t in timed.items() if t is not None}
        calls = {}
        for name, t in timed.items():
            calls[name, "fwd"], calls[name, "fwd+bwd"] = (t.forward, t.sync), (t.forward_backward, t.sync)
        medians = _interleaved_medians(calls, args.runs)
        for name in timed:
            fwd, fwd_bwd = medians[name, "fwd"], medians[name, "fwd+bwd"]
            finite = "yes" if timed[name].finite else "NO"
            print(f"{label:<24} {name:<28} {fwd:9.3f} {fwd_bwd:9.3f}   finite: {finite}", flush=True)
            append(f"| {label} | {name} | {fwd:.3f} | {fwd_bwd:.3f} | {finite} |")
        if args.profile:
            for name, t in timed.items():
                if name == FLA:
                    torch_profiles.append((label, name, t))
                else:
                    profiles += _profile_rows(label, name, t, args.runs)
        if args.stages or args.sweep_warps:
            stages = _stages(x, args.matmul_dtype, args.chunk)
        if args.stages:
            times = _stage_times(stages, args.runs)
            print(f"{label:<24} stages: " + ", ".join(f"{n} {t:.3f}" for n, t in times.items()), flush=True)
        if args.sweep_warps:
            times = _warps_sweep(stages, args.runs)
            for kernel in gpu.KERNEL_WARPS:
                row = ", ".join(f"{w} warps {times[kernel, w]:.3f}" for w in WARPS)
                print(f"{label:<24} {kernel:<18} (its stage) {row}; now {gpu.KERNEL_WARPS[kernel]}", flush=True)
    for label, name, t in torch_profiles:
        profiles += _profile_rows(label, name, t, args.runs)
    if profiles and args.write:
        with open(args.write, "a") as f:
            f.write("\nGPU time per fwd+bwd call of each kernel above 1% (profiler device clocks, mean over ")
            f.write(f"{args.runs} calls):\n\n| shape B,T,H,K,V | impl | kernel | us |\n|---|---|---|---|\n")
            f.write("\n".join(profiles) + "\n")


if __name__ == "__main__":
    main()
