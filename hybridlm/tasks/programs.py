"""`code`: executing a straight-line program over many variables, then printing some of them.

An example of length n is a program of n statements over the variables v_0 .. v_{V-1} (V = `num_variables`), each
ended by ";", then up to `num_queries` queries:

    x = c ;      define: x, a variable not yet defined, gets the constant c (0-9, uniform)
    x = y ;      copy: x (any variable but y) gets y's value; y is defined
    swap x y ;   swap the values of x and y, two distinct defined variables
    print x ;    a query, after the program: the answer, at the x token, is x's final value (as a constant token)

Each statement is a define, copy or swap with weights 1 : 1 : 2 among those possible (the first is a define; a
define needs an undefined variable, a swap two defined ones); the variables of a statement are uniform among those
allowed. The queries ask distinct defined variables, min(`num_queries`, number defined) of them, in a random order.
A variable is given a constant only once, so once all are defined the value of each can only be traced back through
the copies and swaps to the define it came from.

Vocabulary (vocab_size 15 + V): 0 padding, 1 "=", 2 "swap", 3 "print", 4 ";", 5 + c the constant c,
15 + i the variable v_i.

Why it separates the three architectures. A variable's final value is found by following the copies and swaps
that wrote it back to its define: a sequential composition of maps over the variables whose depth grows with the
program's length. Attention can look up where a variable was last written, but each lookup is one hop; a
bounded-depth transformer makes a bounded number of hops, so it fails once chains grow past its depth (tracking
the swaps alone is the word problem of the symmetric group S_V, beyond TC0 for V >= 5 unless TC0 = NC1). A
recurrent layer (Gated DeltaNet) composes the statements in sequence, but keeps a fixed-size state, while the
program's state is V values (V log2 10 bits) that the queries read exactly: with V large enough it cannot hold
them. A hybrid can do both: its recurrent layers track where each variable's value came from (which define), and
its attention layers look up that define's constant in the context.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybridlm.tasks.registry import Lengths, register
from hybridlm.tasks.task import Task, Unpadded

EQUALS, SWAP, PRINT, END = 1, 2, 3, 4
CONSTANT0 = 5
NUM_CONSTANTS = 10
VARIABLE0 = CONSTANT0 + NUM_CONSTANTS
STATEMENT_TOKENS = 4
QUERY_TOKENS = 3

_DEFINE, _COPY, _SWAP = range(3)
_WEIGHTS = np.array([1.0, 1.0, 2.0])  # of define, copy, swap


@register("code", lengths=Lengths(2, 16, 64))
@dataclasses.dataclass(frozen=True, kw_only=True)
class Code(Task):
    """Straight-line program execution; length = number of statements.

    Attributes:
      num_variables: V, how many variables a program may use (at least 2).
      num_queries: how many variables are printed after the program, at most (fewer when fewer are defined).
    """

    num_variables: int = 16
    num_queries: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_variables < 2 or self.num_queries < 1:
            raise ValueError(f"need num_variables >= 2, num_queries >= 1, got {self.num_variables}, {self.num_queries}")

    @property
    def vocab_size(self) -> int:
        return VARIABLE0 + self.num_variables

    def max_tokens(self, length: int) -> int:
        return STATEMENT_TOKENS * length + QUERY_TOKENS * self.num_queries

    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        values = np.full(self.num_variables, -1)  # each variable's constant; -1 while it is undefined
        tokens = []
        for _ in range(length):
            defined = np.flatnonzero(values >= 0)
            possible = np.array([len(defined) < self.num_variables, len(defined) >= 1, len(defined) >= 2])
            weights = np.where(possible, _WEIGHTS, 0.0)
            kind = rng.choice(3, p=weights / weights.sum())
            if kind == _DEFINE:
                x, constant = rng.choice(np.flatnonzero(values < 0)), rng.integers(NUM_CONSTANTS)
                values[x] = constant
                tokens += [VARIABLE0 + x, EQUALS, CONSTANT0 + constant, END]
            elif kind == _COPY:
                y = rng.choice(defined)
                x = (y + rng.integers(1, self.num_variables)) % self.num_variables
                values[x] = values[y]
                tokens += [VARIABLE0 + x, EQUALS, VARIABLE0 + y, END]
            else:
                x, y = rng.choice(defined, size=2, replace=False)
                values[[x, y]] = values[[y, x]]
                tokens += [SWAP, VARIABLE0 + x, VARIABLE0 + y, END]
        defined = np.flatnonzero(values >= 0)
        queried = rng.choice(defined, size=min(self.num_queries, len(defined)), replace=False)
        program = len(tokens)
        for x in queried:
            tokens += [PRINT, VARIABLE0 + x, END]
        targets = np.zeros(len(tokens), np.int64)
        answers = np.zeros(len(tokens), bool)
        asked = program + 1 + QUERY_TOKENS * np.arange(len(queried))  # the x of each "print x ;"
        targets[asked] = CONSTANT0 + values[queried]
        answers[asked] = True
        return np.array(tokens), targets, answers
