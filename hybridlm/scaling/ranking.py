"""Architectures ranked by the loss each law predicts at its compute-optimal size for a FLOP budget."""

from __future__ import annotations

from collections.abc import Mapping

from hybridlm.scaling.law import LossLaw


def compute_optimal_loss(law: LossLaw, compute: float, flops_per_param_token: float) -> float:
    """The loss `law` predicts for training compute `compute` split into N and D compute-optimally."""
    n, d = law.compute_optimal(compute, flops_per_param_token)
    return float(law.loss(n, d))


def rank_at_compute(
    laws: Mapping[str, LossLaw], flops_per_param_token: Mapping[str, float], compute: float
) -> list[str]:
    """The architectures of `laws`, lowest compute-optimal predicted loss at `compute` first; each architecture's
    compute is C = k N D with its own k (`flops_per_param_token`)."""
    losses = {arch: compute_optimal_loss(law, compute, flops_per_param_token[arch]) for arch, law in laws.items()}
    return sorted(losses, key=losses.__getitem__)
