"""The experiment registry: every public module here is a named run whose `get_config()` describes it fully."""

from __future__ import annotations

import importlib
import pathlib

from ml_collections import config_dict

from hybridlm import named_configs
from hybridlm.named_configs import UnknownExperimentError

__all__ = ["UnknownExperimentError", "get_config", "names", "path"]


def names() -> list[str]:
    """The registered experiment names, sorted."""
    return named_configs.names(__name__)


def path(name: str) -> pathlib.Path:
    """The file that defines experiment `name`."""
    return named_configs.path(name, __name__)


def get_config(name: str) -> config_dict.ConfigDict:
    """The full run config of experiment `name`: `NAME`, or `NAME:ARG` for the module's `get_config(ARG)`."""
    module, colon, arg = name.partition(":")
    path(module)
    get = importlib.import_module(f"{__name__}.{module}").get_config
    return get(arg) if colon else get()
