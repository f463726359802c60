"""Loading trained models for scoring and tests: `load_model(path)` takes a training workdir or a Hugging Face
directory and returns a `Model` with `logits(tokens)`."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import config_dict

from hybridlm.hf import convert, load
from hybridlm.model import HybridLM, ModelConfig

_HF_COMPUTE_DTYPE = "float32"  # Hugging Face checkpoints load for scoring: full-precision compute unless asked


class Model:
    """A model and its weights. `params` is our nested dict of jax arrays; `run_config` the full run config."""

    def __init__(self, config: ModelConfig, params: dict[str, Any], run_config: config_dict.ConfigDict):
        self.config = config
        self.params = params
        self.run_config = run_config
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: HybridLM(config, nnx.Rngs(0))))
        self._forward = jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))

    def logits(self, tokens: Any) -> jax.Array:
        """tokens: int [B, T] (one document per row) -> float32 logits [B, T, vocab_size]."""
        tokens = jnp.asarray(tokens, jnp.int32)
        self.config.check_seq_len(tokens.shape[1])
        return self._forward(self.params, tokens)


@dataclasses.dataclass(frozen=True)
class WorkdirCheckpoint:
    """One saved step of a training run: its run config, model config and params (numpy arrays on the host)."""

    run_config: config_dict.ConfigDict
    model_config: ModelConfig
    params: dict[str, Any]
    step: int


def load_model(path: str | pathlib.Path, *, step: int | None = None, dtype: str | None = None) -> Model:
    """The model in `path`: a training workdir (config.json and orbax checkpoints; `step` defaults to the latest) or
    a Hugging Face olmo_hybrid / olmo3 directory. `dtype` sets the compute dtype (default: the run's own for workdirs,
    float32 for Hugging Face directories). Raises ValueError naming the file or field that cannot be loaded."""
    path = pathlib.Path(path)
    if _is_workdir(path):
        checkpoint = load_workdir(path, step)
        run_config, params = checkpoint.run_config, checkpoint.params
    else:
        if step is not None:
            raise ValueError(f"{path} is a Hugging Face directory, which holds one set of weights; drop step={step}")
        run_config = load.run_config_from_hf(path)
        run_config.model.dtype = _HF_COMPUTE_DTYPE
        params = load.load_hf_params(path, ModelConfig.from_config(run_config.model))
    if dtype is not None:
        run_config.model.dtype = dtype
    config = ModelConfig.from_config(run_config.model)
    return Model(config, jax.device_put(params), run_config)


def load_workdir(workdir: str | pathlib.Path, step: int | None = None) -> WorkdirCheckpoint:
    """The run config and params saved at `step` (default: the latest) in a training workdir.

    Restores only the params subtree of the orbax train state (no optimizer state), as numpy arrays.
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path} does not exist: {workdir} is not a training workdir")
    run_config = config_dict.ConfigDict(json.loads(config_path.read_text()))
    model_config = ModelConfig.from_config(run_config.model)
    checkpoints = (workdir / "checkpoints").absolute()
    if not checkpoints.is_dir():
        raise ValueError(f"{workdir} has no checkpoints directory; train it first")
    manager = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(read_only=True))
    steps = manager.all_steps()
    if not steps:
        raise ValueError(f"{checkpoints} holds no checkpoint; train the run past its first checkpoint")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"{checkpoints} has no checkpoint at step {step}; it has steps {sorted(steps)}")
    target = {"params": convert.abstract_params(model_config)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        ),
    )
    manager.close()
    return WorkdirCheckpoint(run_config, model_config, restored.state["params"], step)


def _is_workdir(path: pathlib.Path) -> bool:
    """A training workdir has checkpoints/ and a config.json with a `model` section; anything else is read as a
    Hugging Face directory (whose reader reports what is missing)."""
    config_path = path / "config.json"
    if not (path / "checkpoints").is_dir() or not config_path.is_file():
        return False
    try:
        return "model" in json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return False
