"""`mqar`: multi-query associative recall, as in Zoology (Arora et al., "Zoology: Measuring and Improving Recall in
Efficient Language Models").

An example of length n (tokens) with P key-value pairs (`num_pairs`, or n // 16 as in Zoology's (64, 4),
(128, 8), (256, 16)) is

    k_1 v_1 k_2 v_2 ... k_P v_P | n - 2P query-region tokens

with P distinct keys from [1, 4096) and P distinct values from [4096, 8192), each drawn uniformly. The query region
has (n - 2P) // 2 slots, at its even offsets; each key is asked once, in a random order, in a slot drawn without
replacement with weight i^(a - 1) for the slot's 1-based index i (a = 0.01, Zoology's power law: most queries come
soon after the context). A query is the key itself; the answer there is its value (loss_mask 1 at the P query
positions only). Every other query-region token is filler drawn uniformly from [1, 8192) less the example's keys,
so (unlike Zoology, which may draw a key as filler) the answer positions are exactly the occurrences of keys after
the context.

Vocabulary (vocab_size 8192): 0 padding; [1, 4096) keys (and filler); [4096, 8192) values (and filler).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from hybridlm.tasks.registry import Lengths, register
from hybridlm.tasks.task import Task, Unpadded

VOCAB_SIZE = 8192
VALUE0 = VOCAB_SIZE // 2  # keys are [1, VALUE0), values [VALUE0, VOCAB_SIZE)
LENGTH_PER_PAIR = 16
POWER_A = 0.01

CONFIGS: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
"""(length, num_pairs) of Zoology's training mixture: pairs in proportion to the length, then more pairs at the
fixed length 256, up to its limit of length // 4."""


@register("mqar", lengths=Lengths(64, 256, 1024))
@dataclasses.dataclass(frozen=True, kw_only=True)
class Mqar(Task):
    """Multi-query associative recall; length = number of tokens.

    Attributes:
      num_pairs: key-value pairs per example (None: length // 16). An example of length n needs 4 * pairs <= n.
    """

    vocab_size: ClassVar[int] = VOCAB_SIZE

    num_pairs: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= 4 * self.pairs(self.min_len) <= self.min_len:
            raise ValueError(
                f"an example of min_len={self.min_len} tokens would have {self.pairs(self.min_len)} key-value pairs: "
                "need 1 <= pairs <= length // 4"
            )
        if self.pairs(self.max_len) >= VALUE0:
            raise ValueError(f"{self.pairs(self.max_len)} pairs need more than the {VALUE0 - 1} keys")

    def pairs(self, length: int) -> int:
        """The number of key-value pairs in an example of `length`."""
        return length // LENGTH_PER_PAIR if self.num_pairs is None else self.num_pairs

    def max_tokens(self, length: int) -> int:
        return length

    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        pairs = self.pairs(length)
        context = 2 * pairs
        keys = 1 + rng.choice(VALUE0 - 1, size=pairs, replace=False)
        values = VALUE0 + rng.choice(VOCAB_SIZE - VALUE0, size=pairs, replace=False)
        weights = np.arange(1, (length - context) // 2 + 1) ** (POWER_A - 1.0)
        queries = context + 2 * rng.choice(len(weights), size=pairs, replace=False, p=weights / weights.sum())
        tokens = np.empty(length, np.int64)
        tokens[0:context:2], tokens[1:context:2] = keys, values
        tokens[context:] = rng.choice(np.setdiff1d(np.arange(1, VOCAB_SIZE), keys), size=length - context)
        tokens[queries] = keys
        targets = np.zeros(length, np.int64)
        targets[queries] = values
        answers = np.zeros(length, bool)
        answers[queries] = True
        return tokens, targets, answers
