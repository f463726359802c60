"""Named runs: each public module of a registry package (`experiments` in this repository) defines one run config
with `get_config()`. The library finds the modules by the package's name, without importing it, so the CLI takes
`--config=NAME` while the registry stays a layer above the library."""

from __future__ import annotations

import importlib.util
import pathlib

REGISTRY = "experiments"


class UnknownExperimentError(ValueError):
    """The name matches no module of the registry."""


def directory(package: str = REGISTRY) -> pathlib.Path:
    """The folder of the registry package; raises UnknownExperimentError when it cannot be found."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownExperimentError(
            f"no package {package!r} of named experiments can be found; run from the repository root, "
            "pip install it, or pass --config=path/to/config.py"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def names(package: str = REGISTRY) -> list[str]:
    """The registered experiment names, sorted."""
    return sorted(p.stem for p in directory(package).glob("*.py") if not p.stem.startswith("_"))


def path(name: str, package: str = REGISTRY) -> pathlib.Path:
    """The file that defines experiment `name`."""
    known = names(package)
    if name not in known:
        raise UnknownExperimentError(f"unknown experiment {name!r}; known experiments: {', '.join(known)}")
    return directory(package) / f"{name}.py"
