"""The loss law L(N, D) = E + A / N^alpha + B / D^beta of one architecture, and what follows from it: the loss
floor at a size, the tokens a size needs for a loss, and the compute-optimal split of a FLOP budget."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_LOG_FLOAT_MAX = math.log(np.finfo(float).max)


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta: N non-embedding parameters, D training tokens."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
        """The predicted final loss of `n` parameters trained on `d` tokens (broadcasts)."""
        return self.floor(n) + self.B * np.power(d, -self.beta)

    def floor(self, n: np.ndarray | float) -> np.ndarray | float:
        """E + A / n^alpha: the loss `n` parameters approach as the tokens grow without bound."""
        return self.E + self.A * np.power(n, -self.alpha)

    def tokens_for_loss(self, n: float, target: float) -> float:
        """The tokens `n` parameters need to reach loss `target`: (B / (target - floor(n)))^(1 / beta), and
        math.inf where the target is at or below the floor (no amount of data reaches it) or more tokens than a
        float holds. With beta = 0 (a fit on the edge of its box) the data term is B at every D: 0 tokens where
        the target is at least floor + B, else math.inf."""
        gap = target - self.floor(n)
        if gap <= 0:
            return math.inf
        if self.beta == 0:
            return 0.0 if gap >= self.B else math.inf
        log_tokens = (math.log(self.B) - math.log(gap)) / self.beta
        return math.exp(log_tokens) if log_tokens < _LOG_FLOAT_MAX else math.inf

    def compute_optimal(self, compute: float, flops_per_param_token: float) -> tuple[float, float]:
        """(N, D) minimising the loss at training compute C = k N D for k = `flops_per_param_token`:
        N = G (C / k)^(beta / (alpha + beta)) with G = (alpha A / (beta B))^(1 / (alpha + beta)), D = C / (k N)
        (Chinchilla, appendix D.2). Where an exponent is 0 its term does not fall, and the compute all goes to the
        other: (math.inf, 0) for beta = 0, (0, math.inf) for alpha = 0, the limits where `loss` is E + B or E + A."""
        budget = compute / flops_per_param_token
        if self.beta == 0:
            return math.inf, 0.0
        if self.alpha == 0:
            return 0.0, math.inf
        exponent = 1.0 / (self.alpha + self.beta)
        n = (self.alpha * self.A / (self.beta * self.B)) ** exponent * budget ** (self.beta * exponent)
        return n, budget / n
