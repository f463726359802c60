"""What the op benchmarks (bench_attention, bench_conv, bench_norm) share: relative errors against a reference,
median host times of jitted calls timed in interleaved rounds, and (bench_conv, bench_norm) the command line."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Hashable

import jax
import numpy as np


def relative_error(a: jax.Array, b: jax.Array) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def median_ms(calls: dict[Hashable, Callable[[], object]], runs: int) -> dict[Hashable, float]:
    """Each call's median host time in ms over `runs` rounds that call each once (so a drift of the card's speed
    reaches all of them alike), after one warm-up call each (which compiles)."""
    for call in calls.values():
        jax.block_until_ready(call())
    samples = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(s) for name, s in samples.items()}


def command_line(
    description: str,
    *,
    shape_axes: str,
    default_shapes: str,
    tiling_syntax: str,
    default_tilings: str,
    check: Callable[[list[str]], bool],
    parse_tiling: Callable[[str], object],
    time_shape: Callable[[tuple[int, ...], list[str], dict[str, object], int], list[str]],
    conditions: str,
) -> None:
    """An op benchmark's command line: --shapes (`shape_axes`, e.g. "B,T,C", ';'-separated), --impls, --tilings
    (`tiling_syntax`, ','-separated), --runs, --no-check. Runs `check` on the implementations, then prints the
    rows `time_shape` gives for every shape under the card and `conditions`; exits 1 when the check failed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=default_shapes, help=f"{shape_axes} for the timing, ';'-separated")
    parser.add_argument("--impls", default="xla,pallas_gpu")
    parser.add_argument("--tilings", default=default_tilings, help=f"kernel tilings, ','-separated {tiling_syntax}")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check")
    args = parser.parse_args()
    impls = args.impls.split(",")
    tilings = {spec: parse_tiling(spec) for spec in args.tilings.split(",") if spec}
    ok = args.no_check or check(impls)
    table = [f"| {shape_axes} | call | ms |", "|---|---|---|"]
    for shape in args.shapes.split(";"):
        table += time_shape(tuple(int(n) for n in shape.split(",")), impls, tilings, args.runs)
    print(f"\n{jax.devices()[0].device_kind}, jax {jax.__version__}, {conditions}")
    print("\n".join(table))
    if not ok:
        sys.exit(1)
