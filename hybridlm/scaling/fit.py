"""Fits a LossLaw to (N, D, L) points as Chinchilla's approach 3 does: in log space, a = log A, b = log B,
e = log E, the residual of a point is

    r = LSE(a - alpha log N, b - beta log D, e) - log L

and the fit minimises the sum of Huber(r) (delta 1e-3) with L-BFGS-B from a grid of starting points, keeping the
best minimum. The objective is divided by delta^2, which leaves its minimiser unchanged but puts it on the order of
one, where L-BFGS-B's default stopping tolerances (relative to max(|f|, 1)) stop near the minimum rather than
early (Besiroglu et al. 2024 traced Chinchilla's off estimates to such an early stop). The parameters stay in a
box, `BOUNDS`: exponents in [0, 5], a and b in [-20, 100], e in [-10, 10]. Where the points pin a term down
(several sizes and budgets) its minimum lies well inside; a bootstrap resample with few distinct sizes leaves a
coefficient and its exponent free to grow together without end, and the box stops such a refit at a finite law on
its edge instead of at an overflow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import threadpoolctl
from scipy import optimize

from hybridlm.scaling.law import LossLaw
from hybridlm.scaling.records import Record

HUBER_DELTA = 1e-3
DEFAULT_STARTS = 8  # grid points L-BFGS-B starts from

# Chinchilla's grid of starting points (a, b, e, alpha, beta), appendix D.2.
CHINCHILLA_GRID = np.array(
    list(
        itertools.product(
            np.arange(0.0, 30.0, 5.0),  # a
            np.arange(0.0, 30.0, 5.0),  # b
            np.arange(-1.0, 1.5, 0.5),  # e
            np.arange(0.0, 2.5, 0.5),  # alpha
            np.arange(0.0, 2.5, 0.5),  # beta
        )
    )
)

BOUNDS = [(-20.0, 100.0), (-20.0, 100.0), (-10.0, 10.0), (0.0, 5.0), (0.0, 5.0)]  # a, b, e, alpha, beta


def _theta(law: LossLaw) -> np.ndarray:
    """The fit's parameters (a, b, e, alpha, beta) of `law`."""
    return np.array([np.log(law.A), np.log(law.B), np.log(law.E), law.alpha, law.beta])


def _law(theta: np.ndarray) -> LossLaw:
    """The LossLaw of the fit's parameters `theta` (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = (float(x) for x in theta)
    return LossLaw(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def _residuals(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray):
    """The log-space residuals for each parameter row of `theta` (..., 5) at each point (..., points), and the
    softmax weights of the three terms, the residuals' derivatives by a, b and e (each (..., points))."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    t_n, t_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e
    return top + np.log(total) - log_loss, (w_n / total, w_d / total, w_e / total)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber(r): r^2 / 2 within `delta` of zero, delta (|r| - delta / 2) beyond."""
    size = np.abs(r)
    return np.where(size <= delta, 0.5 * r * r, delta * (size - 0.5 * delta))


def _objective(theta: np.ndarray, log_n, log_d, log_loss, delta: float) -> tuple[float, np.ndarray]:
    """The Huber objective / delta^2 at `theta` (5,) and its gradient."""
    r, (w_n, w_d, w_e) = _residuals(theta, log_n, log_d, log_loss)
    psi = np.clip(r, -delta, delta) / delta**2  # dHuber/dr / delta^2
    gradient = np.array([psi @ w_n, psi @ w_d, psi @ w_e, -(psi * w_n) @ log_n, -(psi * w_d) @ log_d])
    return float(_huber(r, delta).sum()) / delta**2, gradient


def fit_law(
    records: Sequence[Record],
    *,
    delta: float = HUBER_DELTA,
    starts: int = DEFAULT_STARTS,
    initial: LossLaw | None = None,
) -> LossLaw:
    """The LossLaw minimising the Huber objective over `records` (one architecture's). The objective is evaluated
    at every point of CHINCHILLA_GRID and L-BFGS-B runs from the `starts` best of them (the rest start far from any
    minimum and cost most of the time), and from `initial` where given (a fit to similar data: the bootstrap starts
    each refit at the fit to all records too); the lowest minimum wins."""
    log_n = np.log([r.params for r in records])
    log_d = np.log([r.tokens for r in records])
    log_loss = np.log([r.loss for r in records])
    r, _ = _residuals(CHINCHILLA_GRID, log_n, log_d, log_loss)
    thetas = CHINCHILLA_GRID[np.argsort(_huber(r, delta).sum(axis=-1), kind="stable")[:starts]]
    if initial is not None:
        thetas = np.vstack([_theta(initial), thetas])
    best = None
    # L-BFGS-B's steps are BLAS calls on 5-vectors: BLAS threads only add overhead (60x on a busy 2-core machine).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        for theta in thetas:
            result = optimize.minimize(
                _objective, theta, args=(log_n, log_d, log_loss, delta), jac=True, method="L-BFGS-B", bounds=BOUNDS
            )
            if best is None or result.fun < best.fun:
                best = result
    return _law(best.x)
