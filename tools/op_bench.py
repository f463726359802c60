"""What the op benchmarks (bench_attention, bench_conv, bench_norm) share: relative errors against a reference, and
median host times of jitted calls timed in interleaved rounds."""

from __future__ import annotations

import statistics
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
