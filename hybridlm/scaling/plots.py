"""PNG plots of an Analysis (matplotlib's Agg backend, no display needed): loss against training FLOPs with the
fitted curves, and the token savings ratio against N with its bootstrap band."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402

from hybridlm.scaling.analysis import Analysis  # noqa: E402

_CURVE_POINTS = 64


def _finite(values: list[float]) -> np.ndarray:
    """`values` with the infinite ones (a target out of reach) as NaN, which matplotlib leaves out."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def plot_loss_vs_flops(analysis: Analysis, path: pathlib.Path) -> None:
    """Each architecture's records (loss against training FLOPs) and its fitted loss along each measured N, over
    half to twice the tokens measured at that N, at that N's median FLOPs per token."""
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for (arch, records), color in zip(analysis.groups.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        law = analysis.laws[arch]
        axes.scatter([r.flops for r in records], [r.loss for r in records], color=color, label=arch, zorder=3)
        for n in sorted({r.params for r in records}):
            at_n = [r for r in records if r.params == n]
            tokens = np.geomspace(min(r.tokens for r in at_n) / 2, max(r.tokens for r in at_n) * 2, _CURVE_POINTS)
            flops_per_token = np.median([r.flops / r.tokens for r in at_n])
            axes.plot(tokens * flops_per_token, law.loss(n, tokens), color=color, alpha=0.6, linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("training FLOPs")
    axes.set_ylabel("final held-out loss")
    axes.set_title("Loss against compute: records and the fitted law along each N")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_savings(analysis: Analysis, extrapolate_n: float, path: pathlib.Path) -> None:
    """The candidate's token savings ratio against N, from the smallest measured N to `extrapolate_n`, with its
    bootstrap interval as a band; N where the candidate cannot reach the target are left blank. The axis spans -1
    (the candidate needs twice the reference's tokens) to 1, so a wide band does not flatten the estimate."""
    smallest = max(min(r.params for r in analysis.groups[arch]) for arch in (analysis.candidate, analysis.reference))
    sizes = np.geomspace(smallest, max(extrapolate_n, analysis.largest_measured_n), _CURVE_POINTS)
    estimates = [analysis.savings(float(n)).ratio for n in sizes]
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot(sizes, _finite([e.value for e in estimates]), color="C0", label="fit to all records")
    axes.fill_between(
        sizes,
        _finite([e.low for e in estimates]),
        _finite([e.high for e in estimates]),
        color="C0",
        alpha=0.25,
        label=f"{analysis.confidence:.0%} bootstrap interval",
    )
    axes.axvline(analysis.largest_measured_n, color="gray", linestyle="--", label="largest measured N")
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_ylim(-1.0, 1.0)
    axes.set_xlabel("non-embedding parameters N")
    axes.set_ylabel(f"1 - D_{analysis.candidate} / D_{analysis.reference}")
    axes.set_title(f"Tokens {analysis.candidate} saves against {analysis.reference} at matched loss")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
