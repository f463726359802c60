"""The experiment registry: every public module here is a named run whose `get_config()` describes it fully."""

from __future__ import annotations

import importlib

from ml_collections import config_dict

from hybridlm.named_configs import UnknownExperimentError, names, path

__all__ = ["UnknownExperimentError", "get_config", "names", "path"]


def get_config(name: str) -> config_dict.ConfigDict:
    """The full run config of experiment `name`."""
    path(name)
    return importlib.import_module(f"{__name__}.{name}").get_config()
