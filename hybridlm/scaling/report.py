"""The markdown report of an Analysis: the fitted laws with intervals, the token savings at the largest measured
size and at an extrapolated one, and the ranking at a compute."""

from __future__ import annotations

import math
from collections.abc import Callable

from hybridlm.scaling.analysis import LAW_PARAMETERS, Analysis, SavingsEstimate
from hybridlm.scaling.bootstrap import Estimate
from hybridlm.scaling.savings import CHINCHILLA_TOKENS_PER_PARAM


def _number(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("∞" if x > 0 else "-∞")


def _percent(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else _number(x)


def _interval(e: Estimate, show: Callable[[float], str] = _number) -> str:
    return f"{show(e.value)} [{show(e.low)}, {show(e.high)}]"


def _law_table(analysis: Analysis) -> list[str]:
    rows = ["| arch | records | sizes | " + " | ".join(LAW_PARAMETERS) + " |", "|---" * (3 + len(LAW_PARAMETERS)) + "|"]
    for arch, records in analysis.groups.items():
        cells = [_interval(e) for e in analysis.parameters(arch).values()]
        rows.append(f"| {arch} | {len(records)} | {len({r.params for r in records})} | " + " | ".join(cells) + " |")
    return rows


def _savings_row(label: str, s: SavingsEstimate) -> str:
    point = s.point
    saved = _interval(s.ratio, _percent) if point.candidate_reaches and point.reference_reaches else point.describe()
    cells = [label, _number(point.target_loss), _number(point.reference_tokens), _number(point.candidate_tokens)]
    return "| " + " | ".join([*cells, saved, f"{s.unreachable_fraction:.1%}"]) + " |"


def _savings_table(analysis: Analysis, extrapolate_n: float) -> list[str]:
    target = (
        f"the loss {analysis.reference} reaches with D = {CHINCHILLA_TOKENS_PER_PARAM:g} N (Chinchilla-optimal)"
        if analysis.target_loss is None
        else f"{analysis.target_loss:g} (stated)"
    )
    largest = analysis.largest_measured_n
    return [
        f"Target loss at each N: {target}. Saved = 1 - D_{analysis.candidate} / D_{analysis.reference}; a token "
        "count of ∞ means the architecture's loss floor E + A / N^alpha is at or above the target, and the last "
        f"column is the fraction of bootstrap replicates in which {analysis.candidate} cannot reach it (ratio -∞).",
        "",
        f"| N | target loss | D {analysis.reference} | D {analysis.candidate} | saved "
        f"[{analysis.confidence:.0%} interval] | replicates unreachable |",
        "|---|---|---|---|---|---|",
        _savings_row(f"{_number(largest)} (largest measured)", analysis.savings(largest)),
        _savings_row(f"{_number(extrapolate_n)} (extrapolated)", analysis.savings(extrapolate_n)),
    ]


def _ranking_table(analysis: Analysis, compute: float) -> list[str]:
    ranking = analysis.ranking(compute)
    rows = [
        f"Compute-optimal N and D for C = {_number(ranking.compute)} FLOPs (C = k N D, k each architecture's median "
        f"flops / (N D)). The order holds in {ranking.order_frequency:.1%} of bootstrap replicates.",
        "",
        f"| rank | arch | predicted loss [{analysis.confidence:.0%} interval] | N | D | replicates at this rank |",
        "|---|---|---|---|---|---|",
    ]
    for i, arch in enumerate(ranking.order, start=1):
        n, d = ranking.optimal[arch]
        rows.append(
            f"| {i} | {arch} | {_interval(ranking.losses[arch])} | {_number(n)} | {_number(d)} | "
            f"{ranking.rank_frequency[arch]:.1%} |"
        )
    return rows


def markdown(analysis: Analysis, extrapolate_n: float, compute: float, plots: list[str]) -> str:
    """The report: laws, savings at the largest measured N and at `extrapolate_n`, ranking at `compute` FLOPs, and
    links to the `plots` (file names beside the report)."""
    lines = [
        "# Loss-law fit: L(N, D) = E + A / N^alpha + B / D^beta",
        "",
        "N non-embedding parameters, D training tokens, L final held-out loss; fitted per architecture by Huber "
        "(delta 1e-3) on log-space residuals with L-BFGS-B from a grid of starts (Chinchilla approach 3). "
        f"Intervals: {analysis.confidence:.0%} percentile intervals of {len(analysis.replicates)} paired bootstrap "
        "replicates (records resampled with replacement, every architecture refitted).",
        "",
        "## Fitted laws",
        "",
        *_law_table(analysis),
        "",
        f"## Token savings of {analysis.candidate} against {analysis.reference} at matched loss",
        "",
        *_savings_table(analysis, extrapolate_n),
        "",
        "## Ranking by predicted loss at a compute",
        "",
        *_ranking_table(analysis, compute),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in plots],
    ]
    return "\n".join(lines) + "\n"
