"""The table of synthetic tasks by name: each task module adds its tasks with `@register`, declaring the example
lengths the expressivity suite trains and tests it on (`LENGTHS`)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, TypeVar

from hybridlm.tasks.task import Task

_T = TypeVar("_T", bound=type[Task])


@dataclasses.dataclass(frozen=True)
class Lengths:
    """A task's example lengths in the expressivity suite, in the task's unit: training examples have lengths in
    [train_min, train_max], test examples in [train_min, test_max] (test_max >= train_max: the longer ones measure
    length generalisation)."""

    train_min: int
    train_max: int
    test_max: int

    def __post_init__(self) -> None:
        if not 1 <= self.train_min <= self.train_max <= self.test_max:
            raise ValueError(f"need 1 <= train_min <= train_max <= test_max, got {self}")

    def buckets(self) -> list[int]:
        """The test length buckets, each named by the greatest length it holds: train_max (the training lengths),
        then the powers of two above it, up to test_max (the last bucket)."""
        edges = [self.train_max]
        while edges[-1] < self.test_max:
            edges.append(min(1 << edges[-1].bit_length(), self.test_max))
        return edges


TASKS: dict[str, Callable[..., Task]] = {}
LENGTHS: dict[str, Lengths] = {}


def register(name: str, *, lengths: Lengths, **defaults: Any) -> Callable[[_T], _T]:
    """Class decorator: `TASKS[name]` builds the class with `defaults` (overridable by keyword), and
    `LENGTHS[name]` is its expressivity suite lengths."""

    def add(cls: _T) -> _T:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = functools.partial(cls, **defaults)
        LENGTHS[name] = lengths
        return cls

    return add


def make_task(name: str, **config: Any) -> Task:
    """The task `name` built with `config` (seq_len, min_len, max_len, seed, and the task's own settings)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; the tasks are {sorted(TASKS)}")
    return TASKS[name](**config)
