"""The table of synthetic tasks by name: each task module adds its tasks with `@register`."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from hybridlm.tasks.task import Task

TASKS: dict[str, Callable[..., Task]] = {}

_T = TypeVar("_T", bound=type[Task])


def register(name: str, **defaults: Any) -> Callable[[_T], _T]:
    """Class decorator: `TASKS[name]` builds the class with `defaults` (overridable by keyword)."""

    def add(cls: _T) -> _T:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = functools.partial(cls, **defaults)
        return cls

    return add


def make_task(name: str, **config: Any) -> Task:
    """The task `name` built with `config` (seq_len, min_len, max_len, seed, and the task's own settings)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; the tasks are {sorted(TASKS)}")
    return TASKS[name](**config)
