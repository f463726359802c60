"""Named runs: each public module of a registry package (the folder `experiments/`) defines one run config with
`get_config()`. The library finds the modules by the package's name, without importing it, so the CLI takes
`--config=NAME` while the registry stays a layer above the library. `NAME:ARG` (or `FILE.py:ARG`) names the config
that the module's `get_config(ARG)` returns, as in big_vision (e.g. `ladder:hybrid-30M`)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from types import ModuleType

# The registry package's names, in the order they are looked for: as pip installs the folder (setup.py names it so
# that it cannot clash with another project's `experiments`), then as a checkout's root holds it.
REGISTRY = ("hybridlm_experiments", "experiments")


class ConfigFileError(ValueError):
    """`--config` names no experiment, or a file that cannot be a config file; the message names it and the fix."""


class UnknownExperimentError(ConfigFileError):
    """The name matches no module of the registry."""


def directory(package: str | tuple[str, ...] = REGISTRY) -> pathlib.Path:
    """The folder of the registry package (the first of `package`'s names that is found); raises
    UnknownExperimentError when none can be found."""
    candidates = (package,) if isinstance(package, str) else package
    for name in candidates:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            return pathlib.Path(list(spec.submodule_search_locations)[0])
    raise UnknownExperimentError(
        f"no package {' or '.join(map(repr, candidates))} of named experiments can be found; run from the repository "
        "root, pip install it, or pass --config=path/to/config.py"
    )


def names(package: str | tuple[str, ...] = REGISTRY) -> list[str]:
    """The registered experiment names, sorted."""
    return sorted(p.stem for p in directory(package).glob("*.py") if not p.stem.startswith("_"))


def path(name: str, package: str | tuple[str, ...] = REGISTRY) -> pathlib.Path:
    """The file that defines experiment `name`."""
    known = names(package)
    if name not in known:
        raise UnknownExperimentError(f"unknown experiment {name!r}; known experiments: {', '.join(known)}")
    return directory(package) / f"{name}.py"


def experiment_name(spec: str) -> str:
    """The experiment's name from the --config value `spec` as resolved (FILE or FILE:ARG): the file's name without
    the directory and `.py` (`--config=NAME` loads NAME.py), then `:ARG` where given (`ladder:hybrid-6.9M`)."""
    file, colon, arg = spec.partition(":")
    return pathlib.Path(file).stem + colon + arg


def resolve(value: str, package: str | tuple[str, ...] = REGISTRY) -> str:
    """`--config`'s value as config_flags loads it: `FILE.py[:ARG]` for an experiment `NAME[:ARG]` or a config file
    `FILE.py[:ARG]`; raises ConfigFileError naming an unknown experiment, a bad file, or an ARG its `get_config`
    refuses (ValueError)."""
    base, colon, arg = value.partition(":")
    if base.endswith(".py"):
        check_file(base)
        file = base
    else:
        file = str(path(base, package))
    if colon:
        _check_arg(file, arg, value)
    return f"{file}{colon}{arg}"


def _check_arg(file: str, arg: str, value: str) -> None:
    """Runs the module's `get_config(arg)` once, so that an ARG it refuses is one line here instead of config_flags'
    traceback."""
    try:
        load_module(file).get_config(arg)
    except (TypeError, ValueError) as e:
        raise ConfigFileError(f"--config={value}: {e}") from None


def load_module(file: str) -> ModuleType:
    """The module of the config file `file`, run once and registered in sys.modules under a name of its own."""
    name = f"_config_{pathlib.Path(file).stem}_{abs(hash(str(pathlib.Path(file).absolute())))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


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
