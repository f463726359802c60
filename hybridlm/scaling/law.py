"""The loss law L(N, D) = E + A / N^alpha + B / D^beta of one architecture, and what follows from it: the loss
floor at a size, the tokens a size needs for a loss, and the compute-optimal split of a FLOP budget."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


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
        math.inf where the target is at or below the floor (no amount of data reaches it)."""
        gap = target - self.floor(n)
        if gap <= 0:
            return math.inf
        return float((self.B / gap) ** (1.0 / self.beta))

    def compute_optimal(self, compute: float, flops_per_param_token: float) -> tuple[float, float]:
        """(N, D) minimising the loss at training compute C = k N D for k = `flops_per_param_token`:
        N = G (C / k)^(beta / (alpha + beta)) with G = (alpha A / (beta B))^(1 / (alpha + beta)), D = C / (k N)
        (Chinchilla, appendix D.2)."""
        budget = compute / flops_per_param_token
        exponent = 1.0 / (self.alpha + self.beta)
        n = (self.alpha * self.A / (self.beta * self.B)) ** exponent * budget ** (self.beta * exponent)
        return n, budget / n
