"""One comparison of architectures from a ladder's records: the fit of each, its bootstrap replicates, and the
statistics the report and the plots show (parameter intervals, token savings, the ranking at a compute)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from hybridlm.scaling.bootstrap import Estimate, bootstrap_laws, estimate
from hybridlm.scaling.fit import DEFAULT_STARTS, fit_law
from hybridlm.scaling.law import LossLaw
from hybridlm.scaling.ranking import compute_optimal_loss, rank_at_compute
from hybridlm.scaling.records import Record, flops_per_param_token, group_by_arch
from hybridlm.scaling.savings import Savings, token_savings

LAW_PARAMETERS = ("E", "A", "alpha", "B", "beta")


@dataclasses.dataclass(frozen=True)
class SavingsEstimate:
    """The savings of the fits to all records, the bootstrap interval of the ratio, and the fraction of replicates
    in which the candidate cannot reach the target at all (their ratio is -inf)."""

    point: Savings
    ratio: Estimate
    unreachable_fraction: float


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Architectures by compute-optimal predicted loss at `compute`, lowest first, with the loss's interval, the
    compute-optimal (N, D) of each, the fraction of replicates that put each at the same rank, and the fraction
    that give the whole order."""

    compute: float
    order: list[str]
    losses: dict[str, Estimate]
    optimal: dict[str, tuple[float, float]]
    rank_frequency: dict[str, float]
    order_frequency: float


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The fits of a ladder's architectures and their paired bootstrap replicates; `candidate` is compared with
    `reference` (the token savings of the candidate) at `target_loss`, or where None at the loss the reference
    reaches with 20 tokens a parameter."""

    groups: dict[str, list[Record]]
    laws: dict[str, LossLaw]
    replicates: list[dict[str, LossLaw]]
    candidate: str
    reference: str
    target_loss: float | None
    confidence: float

    @property
    def largest_measured_n(self) -> float:
        """The largest N both the candidate and the reference were measured at."""
        return min(max(r.params for r in self.groups[arch]) for arch in (self.candidate, self.reference))

    def parameters(self, arch: str) -> dict[str, Estimate]:
        """E, A, alpha, B and beta of `arch`'s fit with their intervals."""
        return {
            name: estimate(
                getattr(self.laws[arch], name), [getattr(r[arch], name) for r in self.replicates], self.confidence
            )
            for name in LAW_PARAMETERS
        }

    def _savings(self, laws: dict[str, LossLaw], n: float) -> Savings:
        return token_savings(laws[self.candidate], laws[self.reference], n, self.target_loss)

    def savings(self, n: float) -> SavingsEstimate:
        """The candidate's token savings against the reference at `n` parameters."""
        point = self._savings(self.laws, n)
        samples = [self._savings(replicate, n) for replicate in self.replicates]
        return SavingsEstimate(
            point=point,
            ratio=estimate(point.ratio, [s.ratio for s in samples], self.confidence),
            unreachable_fraction=float(np.mean([not s.candidate_reaches for s in samples])),
        )

    def ranking(self, compute: float) -> Ranking:
        """The architectures ranked at training compute `compute` (FLOPs), each architecture's FLOPs k N D with k
        the median of its records' flops / (params tokens)."""
        k = {arch: flops_per_param_token(records) for arch, records in self.groups.items()}
        order = rank_at_compute(self.laws, k, compute)
        orders = [rank_at_compute(replicate, k, compute) for replicate in self.replicates]
        return Ranking(
            compute=compute,
            order=order,
            losses={
                arch: estimate(
                    compute_optimal_loss(self.laws[arch], compute, k[arch]),
                    [compute_optimal_loss(r[arch], compute, k[arch]) for r in self.replicates],
                    self.confidence,
                )
                for arch in order
            },
            optimal={arch: self.laws[arch].compute_optimal(compute, k[arch]) for arch in order},
            rank_frequency={arch: float(np.mean([o.index(arch) == i for o in orders])) for i, arch in enumerate(order)},
            order_frequency=float(np.mean([o == order for o in orders])),
        )


def analyse(
    records: Sequence[Record],
    candidate: str,
    reference: str,
    *,
    target_loss: float | None = None,
    samples: int = 1000,
    seed: int = 0,
    starts: int = DEFAULT_STARTS,
    confidence: float = 0.9,
    workers: int = 1,
) -> Analysis:
    """Fits every architecture of `records` and draws `samples` paired bootstrap replicates (seeded by `seed`;
    fits from `starts` grid points; refits in `workers` processes); ValueError if `candidate` or `reference` has no
    records, or `samples` or `workers` < 1."""
    if samples < 1:
        raise ValueError(f"the intervals need at least one bootstrap replicate, not {samples}")
    if workers < 1:
        raise ValueError(f"the bootstrap needs at least one worker process, not {workers}")
    groups = group_by_arch(records)
    missing = [arch for arch in (candidate, reference) if arch not in groups]
    if missing:
        raise ValueError(f"no records of {', '.join(missing)}; the records have {', '.join(groups)}")
    laws = {arch: fit_law(arch_records, starts=starts) for arch, arch_records in groups.items()}
    return Analysis(
        groups=groups,
        laws=laws,
        replicates=bootstrap_laws(groups, laws, samples, seed, starts, workers),
        candidate=candidate,
        reference=reference,
        target_loss=target_loss,
        confidence=confidence,
    )
