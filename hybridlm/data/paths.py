"""Expands the paths and globs of `config.data.paths` into files, refusing ones that name nothing."""

from __future__ import annotations

import glob
import os

GLOB_CHARS = frozenset("*?[")


def expand(pattern: str, key: str) -> list[str]:
    """The files ``pattern`` (a path or a glob, ``~`` allowed) names, sorted; raises ValueError if there are none.

    ``key`` is how messages refer to the pattern, e.g. "config.data.paths[1]".
    """
    expanded = os.path.expanduser(pattern)
    if not GLOB_CHARS & set(expanded):
        if not os.path.isfile(expanded):
            raise ValueError(f"{key}: no such file {expanded!r}")
        return [expanded]
    files = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    if not files:
        raise ValueError(f"{key}: the glob {expanded!r} matches no file")
    return files


def expand_all(patterns: tuple[str, ...] | list[str], key: str) -> list[str]:
    """The files of several patterns, in the order given (each pattern's matches sorted), without repeats."""
    files = (f for i, pattern in enumerate(patterns) for f in expand(pattern, f"{key}[{i}]"))
    return list(dict.fromkeys(files))
