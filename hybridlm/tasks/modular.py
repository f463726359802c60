"""`modular` and `modular_brackets`: the running value, mod 5, of an arithmetic expression over the digits 0-4.

An example of length n is n tokens of an expression in the grammar

    expression := operand (operator operand)*        operand := digit | "(" expression ")"

with the task's `operators` (from + - *, with the usual precedence: * before + and -, left to right otherwise)
and brackets nested at most `max_depth` deep. The answer positions are the positions t where tokens 1..t form a
complete expression, i.e. the ends of the operands outside all brackets (a digit at depth 0, or the ")" that
closes a bracket at depth 0); the answer there is the value of tokens 1..t mod 5 (in [0, 5), as Python's `%`).
Brackets are closed in time for the whole example to be one expression when n is odd; when n is even (a complete
expression has an odd number of tokens) it ends with one trailing operator, which is not an answer position.

- `modular` (operators "+", no brackets): "d1 + d2 + ... + dk", the running sum mod 5 of the digits; an answer at
  every digit.
- `modular_brackets` (operators "+-*", brackets up to 8 deep): e.g. "3 - ( 4 * ( 2 + 1 ) ) * 2", with answers at
  the first "3" (3), at the last ")" (3 - 12 = 1 mod 5) and at the last "2" (the whole expression, -21 = 4 mod 5).
  Evaluating it needs a stack: it is a context-free task (Deletang et al., "Neural Networks and the Chomsky
  Hierarchy").

Vocabulary (vocab_size 11): 0 padding; 1 + d the digit d (0-4); 6 "+", 7 "-", 8 "*", 9 "(", 10 ")".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from hybridlm.tasks.registry import Lengths, register
from hybridlm.tasks.task import Task, Unpadded

MODULUS = 5
DIGIT0 = 1
SYMBOLS = "+-*()"
SYMBOL0 = DIGIT0 + MODULUS
OPEN = SYMBOL0 + SYMBOLS.index("(")
CLOSE = SYMBOL0 + SYMBOLS.index(")")

_OPEN_CHANCE = 0.25  # that an operand is a bracket, where one fits
_CLOSE_CHANCE = 0.25  # that an open bracket closes after an operand, where it need not


@dataclasses.dataclass
class _Level:
    """The value so far of an expression at one bracket level, mod 5: `total` sums its finished additive terms,
    `term` is its last term (signed, a product of operands), `operator` comes before its next operand."""

    total: int = 0
    term: int = 0
    operator: str = "+"

    def take(self, operand: int) -> None:
        """Extends the expression by `operator operand`."""
        if self.operator == "*":
            self.term = self.term * operand % MODULUS
        else:
            self.total = (self.total + self.term) % MODULUS
            self.term = operand if self.operator == "+" else -operand % MODULUS

    @property
    def value(self) -> int:
        return (self.total + self.term) % MODULUS


@register("modular_brackets", lengths=Lengths(3, 40, 256), operators="+-*", max_depth=8)
@register("modular", lengths=Lengths(3, 40, 256))
@dataclasses.dataclass(frozen=True, kw_only=True)
class Modular(Task):
    """An expression mod 5 with running answers; length = number of tokens.

    Attributes:
      operators: the binary operators used, drawn uniformly: a non-empty string over "+-*".
      max_depth: how deep brackets nest (0: no brackets).
    """

    vocab_size: ClassVar[int] = SYMBOL0 + len(SYMBOLS)

    operators: str = "+"
    max_depth: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.operators or len(set(self.operators)) < len(self.operators) or set(self.operators) - set("+-*"):
            raise ValueError(f"operators must be distinct characters of '+-*', got {self.operators!r}")
        if self.max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {self.max_depth}")

    def max_tokens(self, length: int) -> int:
        return length

    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        tokens = np.empty(length, np.int64)
        targets = np.zeros(length, np.int64)
        answers = np.zeros(length, bool)
        levels = [_Level()]  # the open bracket levels, outermost (the whole expression) first
        after_operand = False
        for t in range(length):
            left, depth = length - t, len(levels) - 1  # left: the tokens still to come, this one included
            operand = None  # the value of the operand that ends here, if one does
            if after_operand and depth > 0 and (left < depth + 2 or rng.random() < _CLOSE_CHANCE):
                tokens[t], operand = CLOSE, levels.pop().value  # forced when "operator digit" + closes don't fit
            elif after_operand:
                levels[-1].operator = self.operators[rng.integers(len(self.operators))]
                tokens[t] = SYMBOL0 + SYMBOLS.index(levels[-1].operator)
            elif depth < self.max_depth and left >= depth + 3 and rng.random() < _OPEN_CHANCE:
                tokens[t] = OPEN  # there is room for "( digit )" and the closes of the brackets open now
                levels.append(_Level())
            else:
                operand = int(rng.integers(MODULUS))
                tokens[t] = DIGIT0 + operand
            after_operand = operand is not None
            if after_operand:
                levels[-1].take(operand)
            if after_operand and len(levels) == 1:
                answers[t] = True
                targets[t] = DIGIT0 + levels[0].value
        return tokens, targets, answers
