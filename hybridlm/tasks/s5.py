"""`s5`: the word problem of S5, the group of permutations of 5 elements.

S5 is not solvable, so its word problem is NC1-complete (Barrington): unless TC0 = NC1, no bounded-depth threshold
circuit family, and so no fixed-depth log-precision transformer, computes the running product at every length.

A permutation p is the tuple (p(0), .., p(4)); `ELEMENTS` lists the 120 of them in lexicographic order (the
identity first). Composition: (p o q)(i) = p(q(i)), i.e. q is applied first. An example of length n is n
permutations p_1 .. p_n drawn uniformly.

Vocabulary (vocab_size 121): 0 padding; 1 + k the permutation ELEMENTS[k].

Layout: inputs are p_1 .. p_n; at every position t the answer is the running product p_t o ... o p_1 (p_1 applied
first, p_t last), as a token (loss_mask 1 at all n positions).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import numpy as np

from hybridlm.tasks.registry import Lengths, register
from hybridlm.tasks.task import Task, Unpadded

ELEMENTS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(5)))
ELEMENT0 = 1

_INDEX = {p: k for k, p in enumerate(ELEMENTS)}
_PRODUCT = np.array([[_INDEX[tuple(p[i] for i in q)] for q in ELEMENTS] for p in ELEMENTS])
"""int [120, 120]: _PRODUCT[a, b] is the index of ELEMENTS[a] o ELEMENTS[b]."""


@register("s5", lengths=Lengths(3, 40, 256))
@dataclasses.dataclass(frozen=True, kw_only=True)
class S5(Task):
    """The S5 word problem; length = number of permutations."""

    vocab_size: ClassVar[int] = ELEMENT0 + len(ELEMENTS)

    def max_tokens(self, length: int) -> int:
        return length

    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        elements = rng.integers(0, len(ELEMENTS), size=length)
        products = np.empty(length, np.int64)
        product = 0  # ELEMENTS[0], the identity
        for t, element in enumerate(elements):
            product = _PRODUCT[element, product]
            products[t] = product
        return ELEMENT0 + elements, ELEMENT0 + products, np.ones(length, bool)
