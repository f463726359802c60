"""The experiment registry: every public module here is a named run whose `get_config()` describes it fully."""

from __future__ import annotations

import importlib

from ml_collections import config_dict

from hybridlm.named_configs import UnknownExperimentError, names, path

__all__ = ["UnknownExperimentError", "get_config", "names", "path"]


def get_config(name: str) -> config_dict.ConfigDict:
    """The full run config of experiment `name`: `NAME`, or `NAME:ARG` for the module's `get_config(ARG)`."""
    module, colon, arg = name.partition(":")
    path(module)
    get = importlib.import_module(f"{__name__}.{module}").get_config
    return get(arg) if colon else get()
