"""Named runs: each public module of a registry package (`experiments` in this repository) defines one run config
with `get_config()`. The library finds the modules by the package's name, without importing it, so the CLI takes
`--config=NAME` while the registry stays a layer above the library."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

REGISTRY = "experiments"


class ConfigFileError(ValueError):
    """`--config` names no experiment, or a file that cannot be a config file; the message names it and the fix."""


class UnknownExperimentError(ConfigFileError):
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


def check_file(file: str) -> None:
    """Raises ConfigFileError unless `file` exists, parses as Python and defines `get_config` (a function, or a name
    bound by an import or assignment); reads the file without running it."""
    path = pathlib.Path(file)
    if not path.is_file():
        raise ConfigFileError(
            f"config file {file} does not exist; give an experiment name (python -m experiments lists them) or the "
            "path of a Python file that defines get_config()"
        )
    try:
        tree = ast.parse(path.read_bytes(), filename=file)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        line = f", line {e.lineno}" if getattr(e, "lineno", None) else ""
        message = getattr(e, "msg", None) or str(e)
        raise ConfigFileError(f"config file {file}{line}: {message}; fix the file's Python syntax") from None
    if not _binds_get_config(tree):
        raise ConfigFileError(
            f"config file {file} defines no get_config(); add a get_config() that returns the run's ConfigDict "
            "(as experiments/tiny_hybrid.py does)"
        )


def _binds_get_config(tree: ast.Module) -> bool:
    """Whether the module defines, assigns or imports the name `get_config` (or star-imports, which may)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "get_config":
            return True
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == "get_config":
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" or (a.asname or a.name) == "get_config" for a in node.names):
                return True
    return False
