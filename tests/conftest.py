"""Shared fixtures: a small run config that compiles fast, tool loading; `--runslow` opts into tests marked slow, and
tests marked gpu run only where JAX's default backend is a GPU.

The Hugging Face tests (tests/test_hf.py) need the hf extra, torch and transformers (`pip install -e ".[test,hf]"`, or
./scripts/test.sh, which installs it): without it they fail to collect, naming the fix, rather than skip, so a broken
install cannot pass as a green run. To run the suite without them on purpose, set HYBRIDLM_SKIP_HF=1: they are then
skipped, installed or not."""

import contextlib
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterator

import jax
import pytest
from absl import flags
from ml_collections import config_dict

import experiments

HF_OPT_OUT = "HYBRIDLM_SKIP_HF"  # "1": skip tests/test_hf.py instead of failing where the hf extra is missing


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR"
_OWNED_CACHE = pytest.StashKey[str]()  # the cache directory this session made, removed at its end


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; skipped unless --runslow is given")
    config.addinivalue_line(
        "markers", "gpu: runs compiled GPU kernels; skipped unless JAX's default backend is a GPU (pytest -m gpu)"
    )
    _share_compilation_cache(config)


def _share_compilation_cache(config) -> None:
    """One JAX compilation cache for the session (a fresh directory unless JAX_COMPILATION_CACHE_DIR is set): the
    test processes (pytest-xdist's workers inherit the environment) and the training runs they start compile each
    program once; a cached program is the compiled one, so no result changes."""
    if COMPILATION_CACHE not in os.environ:
        os.environ[COMPILATION_CACHE] = tempfile.mkdtemp(prefix="hybridlm-tests-jax-cache-")
        config.stash[_OWNED_CACHE] = os.environ[COMPILATION_CACHE]
    jax.config.update("jax_compilation_cache_dir", os.environ[COMPILATION_CACHE])


def pytest_unconfigure(config):
    if _OWNED_CACHE in config.stash:
        shutil.rmtree(config.stash[_OWNED_CACHE], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--runslow"):
        skip = pytest.mark.skip(reason="slow: pass --runslow to run")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    backend = jax.default_backend() if gpu_items else None  # initialises JAX's backends only when needed
    if backend != "gpu":
        skip = pytest.mark.skip(reason=f"gpu: needs a GPU; JAX's default backend is {backend}")
        for item in gpu_items:
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


def import_hf_extra() -> tuple[types.ModuleType, types.ModuleType]:
    """torch and transformers, for tests/test_hf.py to import at its top. Either one missing fails the module's
    collection with the command that installs them; with HYBRIDLM_SKIP_HF=1 set the module is skipped instead."""
    if os.environ.get(HF_OPT_OUT) == "1":
        pytest.skip(f"{HF_OPT_OUT}=1: the Hugging Face tests are opted out", allow_module_level=True)
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as error:
        missing = str(error)  # failed outside the handler, so the report is not chained to the ImportError
    pytest.fail(
        f"{missing}; the Hugging Face tests need the hf extra: pip install -e '.[test,hf]' (or run ./scripts/test.sh),"
        f" or set {HF_OPT_OUT}=1 to skip them",
        pytrace=False,
    )


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


@contextlib.contextmanager
def cli_flags(define: Callable[[], None]) -> Iterator[None]:
    """The absl flags a command's `define` adds, marked parsed, for the block; removed after it, so that another
    command tested in the same process (pytest-xdist runs several files in one) can define flags of the same names."""
    before = set(flags.FLAGS)
    define()
    flags.FLAGS.mark_as_parsed()
    try:
        yield
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
