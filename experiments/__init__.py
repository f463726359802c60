"""The experiment registry: every public module here is a named run whose `get_config()` describes it fully."""

from __future__ import annotations

import importlib
import pathlib

from ml_collections import config_dict

_DIR = pathlib.Path(__file__).parent


class UnknownExperimentError(ValueError):
    """The name matches no module in `experiments/`."""


def names() -> list[str]:
    """The registered experiment names, sorted."""
    return sorted(p.stem for p in _DIR.glob("*.py") if not p.stem.startswith("_"))


def path(name: str) -> pathlib.Path:
    """The file that defines experiment `name`."""
    if name not in names():
        raise UnknownExperimentError(f"unknown experiment {name!r}; known experiments: {', '.join(names())}")
    return _DIR / f"{name}.py"


def get_config(name: str) -> config_dict.ConfigDict:
    """The full run config of experiment `name`."""
    path(name)
    return importlib.import_module(f"experiments.{name}").get_config()
