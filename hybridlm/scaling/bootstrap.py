"""Bootstrap intervals: resample each architecture's records with replacement, refit, and read intervals off the
percentiles of what the refits predict (Besiroglu et al. 2024, section 4)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
from collections.abc import Mapping, Sequence

import numpy as np

from hybridlm.scaling.fit import DEFAULT_STARTS, fit_law
from hybridlm.scaling.law import LossLaw
from hybridlm.scaling.records import Record


def bootstrap_laws(
    groups: Mapping[str, Sequence[Record]],
    laws: Mapping[str, LossLaw],
    samples: int,
    seed: int,
    starts: int = DEFAULT_STARTS,
    workers: int = 1,
) -> list[dict[str, LossLaw]]:
    """`samples` replicates, each refitting every architecture of `groups` to a resample (with replacement, of the
    same size) of its records, by fit_law from its `starts` best grid points and from the architecture's fit to all
    records (`laws`). Replicate i of two architectures is a pair, so a statistic comparing them (a savings ratio, a
    ranking) gets its interval from paired refits. The refits run in `workers` processes (1: in this one); the
    replicates are the same for any `workers` and deterministic for a given `seed`."""
    rng = np.random.default_rng(seed)
    resamples = []  # (arch, records), replicate by replicate
    for _ in range(samples):
        for arch, records in groups.items():
            picks = rng.integers(0, len(records), size=len(records))
            resamples.append((arch, [records[i] for i in picks]))
    refit = functools.partial(_refit, laws=dict(laws), starts=starts)
    if workers > 1:
        # spawn, not fork: the caller may hold threads (BLAS, jax) that a forked child would inherit half-way.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            fitted = iter(list(pool.map(refit, resamples, chunksize=max(1, len(resamples) // (4 * workers)))))
    else:
        fitted = map(refit, resamples)
    return [{arch: next(fitted) for arch in groups} for _ in range(samples)]


def _refit(resample: tuple[str, list[Record]], laws: dict[str, LossLaw], starts: int) -> LossLaw:
    arch, records = resample
    return fit_law(records, starts=starts, initial=laws[arch])


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap percentile interval [low, high] at `confidence`."""

    value: float
    low: float
    high: float
    confidence: float


def estimate(value: float, samples: Sequence[float] | np.ndarray, confidence: float) -> Estimate:
    """`value` with the central `confidence` interval of `samples`. NaNs (statistics undefined in a replicate) are
    left out; the percentiles are sample values (no interpolation), so infinite samples give infinite bounds."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(np.asarray(samples, dtype=float), [tail, 1.0 - tail], method="inverted_cdf")
    return Estimate(value=float(value), low=float(low), high=float(high), confidence=confidence)
