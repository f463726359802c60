"""Shared fixtures: a small run config that compiles fast, tool loading; `--runslow` opts into tests marked slow."""

import importlib.util
import pathlib
import sys
import types

import pytest
from ml_collections import config_dict

import experiments


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; skipped unless --runslow is given")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def write_config_file(directory: pathlib.Path, module: str, function: str, name: str) -> pathlib.Path:
    """`directory`/`name`.py, a config file for the command line whose get_config() returns `function()` of
    tests/`module`.py (the tools name a run after its config file)."""
    path = directory / f"{name}.py"
    tests = str(pathlib.Path(__file__).parent)
    path.write_text(
        f"import sys\n\nsys.path.insert(0, {tests!r})\nfrom {module} import {function}\n\n\n"
        f"def get_config():\n    return {function}()\n"
    )
    return path


def load_tool(name: str) -> types.ModuleType:
    """Imports ``tools/<name>.py`` (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def small_config(layer_pattern=("gdn", "attn")) -> config_dict.ConfigDict:
    """tiny_hybrid shrunk further (width 32, 2 layers, 32-token sequences) so each compile takes seconds."""
    config = experiments.get_config("tiny_hybrid")
    model = config.model
    model.d_model, model.num_layers, model.layer_pattern = 32, len(layer_pattern), layer_pattern
    model.num_heads, model.num_kv_heads, model.mlp_hidden, model.sliding_window = 4, 2, 64, 8
    model.gdn.num_key_heads, model.gdn.num_value_heads = 2, 4
    model.gdn.key_head_dim, model.gdn.value_head_dim, model.gdn.chunk_size = 8, 12, 8
    config.data.seq_len, config.data.batch_size, config.data.max_bytes = 32, 4, 400_000
    config.data.heldout_fraction = 0.2
    config.optim.warmup_steps = 2
    config.train.update(num_steps=6, log_every=1, eval_every=3, eval_batches=2, checkpoint_every=3)
    return config


@pytest.fixture
def small_run_config() -> config_dict.ConfigDict:
    return small_config()
