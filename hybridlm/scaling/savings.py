"""The token savings of a candidate architecture X against a reference Y at matched loss: at N parameters, the
reference reaches a target loss L* with D_Y tokens and the candidate with D_X; the ratio 1 - D_X / D_Y is the
fraction of the reference's tokens the candidate saves (negative where it needs more)."""

from __future__ import annotations

import dataclasses
import math

from hybridlm.scaling.law import LossLaw

CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclasses.dataclass(frozen=True)
class Savings:
    """D_X and D_Y at `n` parameters for `target_loss`; a token count is math.inf where that architecture's loss
    floor E + A / N^alpha is at or above the target, so no amount of data reaches it."""

    n: float
    target_loss: float
    candidate_tokens: float
    reference_tokens: float

    @property
    def candidate_reaches(self) -> bool:
        return math.isfinite(self.candidate_tokens)

    @property
    def reference_reaches(self) -> bool:
        return math.isfinite(self.reference_tokens)

    @property
    def ratio(self) -> float:
        """1 - D_X / D_Y; -inf where only the reference reaches the target (the candidate would need infinitely
        many tokens), 1 where only the candidate does, NaN where neither does."""
        if self.candidate_reaches and self.reference_reaches:
            return 1.0 - self.candidate_tokens / self.reference_tokens
        if self.candidate_reaches or self.reference_reaches:
            return 1.0 if self.candidate_reaches else -math.inf
        return math.nan

    def describe(self) -> str:
        """The ratio in words, saying which architecture cannot reach the target where one cannot."""
        if self.candidate_reaches and self.reference_reaches:
            return f"{self.ratio:.1%} of the tokens saved"
        unreachable = [
            name
            for name, reaches in (("candidate", self.candidate_reaches), ("reference", self.reference_reaches))
            if not reaches
        ]
        return f"target loss {self.target_loss:.4g} unreachable by the {' and the '.join(unreachable)} at this N"


def token_savings(
    candidate: LossLaw,
    reference: LossLaw,
    n: float,
    target_loss: float | None = None,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
) -> Savings:
    """The savings at `n` parameters for `target_loss`; by default the loss the reference reaches with
    `tokens_per_param` tokens a parameter (20, Chinchilla-optimal)."""
    if target_loss is None:
        target_loss = float(reference.loss(n, tokens_per_param * n))
    return Savings(
        n=n,
        target_loss=target_loss,
        candidate_tokens=candidate.tokens_for_loss(n, target_loss),
        reference_tokens=reference.tokens_for_loss(n, target_loss),
    )
