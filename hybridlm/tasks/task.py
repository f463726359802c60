"""The base of the synthetic tasks: a seeded, random-access source of fixed-size examples.

A task is a grain random-access data source (`len(task)`, `task[index]`). Example `index` is a function of the
task's configuration, `seed` and `index` alone: its numpy Generator is seeded with `SeedSequence([seed, index])`,
so examples can be read in any order, by any number of workers, and read again identically.

An example is a dict of numpy arrays:
  inputs:    int32 [seq_len]: the example's tokens, then padding (id 0 in every task);
  targets:   int32 [seq_len]: at an answer position the token the model must output there, 0 elsewhere;
  loss_mask: float32 [seq_len]: 1.0 at the answer positions (the ones trained and scored), 0.0 elsewhere (padding
    included);
  length:    int32 []: the example's length in the task's unit (bits, permutations, tokens or statements), drawn
    uniformly from [min_len, max_len].
"""

from __future__ import annotations

import abc
import dataclasses
import operator
from typing import Any, ClassVar

import numpy as np

PAD = 0

Unpadded = tuple[np.ndarray, np.ndarray, np.ndarray]
"""An example before padding: tokens int [T], targets int [T], answer positions bool [T]."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
    """A synthetic task: `len(task)` examples, `task[index]` one of them (see the module docstring).

    Attributes:
      vocab_size: token ids are in [0, vocab_size); 0 is padding.
      seq_len: the size of every example's arrays.
      min_len: the least example length (in the task's unit).
      max_len: the greatest example length; `max_tokens(max_len)` must fit in `seq_len`.
      seed: selects the task's examples (a non-negative int).
      num_examples: len(task).
    """

    vocab_size: ClassVar[int]

    seq_len: int
    min_len: int
    max_len: int
    seed: int = 0
    num_examples: int = 2**31

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")
        if self.max_tokens(self.max_len) > self.seq_len:
            raise ValueError(
                f"seq_len={self.seq_len} is too short: an example of length {self.max_len} takes up to "
                f"{self.max_tokens(self.max_len)} tokens"
            )
        if self.seed < 0 or self.num_examples < 1:
            raise ValueError(f"need seed >= 0 and num_examples >= 1, got {self.seed} and {self.num_examples}")

    @abc.abstractmethod
    def max_tokens(self, length: int) -> int:
        """The most tokens an example of `length` takes."""

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator, length: int) -> Unpadded:
        """One example of `length`, drawn with `rng` alone: tokens, targets (read at answer positions only) and
        answer positions, each of at most `max_tokens(length)` entries."""

    def settings(self) -> dict[str, Any]:
        """The task's own settings: its fields beyond those of every task (lengths, seq_len, seed, size)."""
        common = {field.name for field in dataclasses.fields(Task)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in common}

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = operator.index(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} is out of range for a task of {self.num_examples} examples")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        length = int(rng.integers(self.min_len, self.max_len, endpoint=True))
        tokens, targets, answers = self.generate(rng, length)
        return {
            "inputs": _padded(tokens, self.seq_len, np.int32),
            "targets": _padded(np.where(answers, targets, PAD), self.seq_len, np.int32),
            "loss_mask": _padded(answers, self.seq_len, np.float32),
            "length": np.int32(length),
        }


def _padded(values: np.ndarray, seq_len: int, dtype: type[np.generic]) -> np.ndarray:
    """`values` [T] as `dtype` [seq_len], zero after the first T entries."""
    out = np.zeros(seq_len, dtype)
    out[: len(values)] = values
    return out
