"""`parity`: the running parity of a bit string.

As in Grazzi et al., "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues" (trained on lengths
3-40, tested on 40-256). An example of length n is n bits.

Vocabulary (vocab_size 3): 0 padding, 1 the bit 0, 2 the bit 1.

Layout: inputs are the bits b_1 .. b_n; at every position t the answer is b_1 xor ... xor b_t, as a bit token
(loss_mask 1 at all n positions).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from hybridlm.tasks.registry import Lengths, register
from hybridlm.tasks.task import Task, Unpadded

BIT0 = 1


@register("parity", lengths=Lengths(3, 40, 256))
@dataclasses.dataclass(frozen=True, kw_only=True)
class Parity(Task):
    """Running parity; length = number of bits."""

    vocab_size: ClassVar[int] = 3

    def max_tokens(self, length: int) -> int:
        return length

    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        bits = rng.integers(0, 2, size=length)
        return BIT0 + bits, BIT0 + np.bitwise_xor.accumulate(bits), np.ones(length, bool)
