"""A training workdir's layout, and reading and writing what is in it:

    config.json          the run config (`record_config`, `read_run_config`)
    checkpoints/<step>/  orbax checkpoints of {"state": the train state, "data": the data iterator's state}
                         (`Checkpointer` saves and resumes them; `restore_params` reads one step's params)
    metrics.jsonl        one JSON line of metrics per logged step (`metrics_file`)
    tensorboard/         the same scalars as TensorBoard event files (`tensorboard_dir`)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import config_dict

from hybridlm.model.config import ConfigError

_CONFIG_FILE = "config.json"
_CHECKPOINTS_DIR = "checkpoints"
_METRICS_FILE = "metrics.jsonl"
_TENSORBOARD_DIR = "tensorboard"


def checkpoints_dir(workdir: pathlib.Path) -> pathlib.Path:
    """Where the orbax checkpoints of the run in `workdir` live, one subdirectory per saved step."""
    return workdir / _CHECKPOINTS_DIR


def metrics_file(workdir: pathlib.Path) -> pathlib.Path:
    """The JSONL file of the run's logged metrics: one `{"step": s, name: value, ...}` object a line."""
    return workdir / _METRICS_FILE


def tensorboard_dir(workdir: pathlib.Path) -> pathlib.Path:
    """The directory of the run's TensorBoard event files."""
    return workdir / _TENSORBOARD_DIR


def is_workdir(path: pathlib.Path) -> bool:
    """Whether `path` is a training workdir: it has checkpoints/ and a config.json with a `model` section."""
    config_path = path / _CONFIG_FILE
    if not checkpoints_dir(path).is_dir() or not config_path.is_file():
        return False
    try:
        return "model" in json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return False


class Checkpointer:
    """Saves the train state and the data iterator's state every N steps (keeping the newest few) in `directory`
    (`checkpoints_dir(workdir)`) and restores the latest ones."""

    def __init__(self, workdir: pathlib.Path, keep: int):
        self.directory = checkpoints_dir(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` (a pytree of arrays) and `data_state` (JSON) at `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The train state saved at `step`, laid out (shapes, dtypes, shardings) as `abstract_state`, and the data
        state saved with it."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored.state, restored.data

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def record_config(workdir: pathlib.Path, config: config_dict.ConfigDict) -> None:
    """Writes the run config `config` into `workdir`; if one is there, refuses a model that differs from the one
    trained there.

    In a run of several processes every process checks (each raises the same ConfigError) and only process 0 writes,
    replacing the file in one step so that no process reads it half-written.
    """
    path = workdir / _CONFIG_FILE
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(
            k
            for k in set(previous["model"]) | set(current["model"])
            if previous["model"].get(k) != current["model"].get(k)
        )
        if changed:
            raise ConfigError(
                f"workdir {workdir} holds a run of a different model (config.model.{changed[0]}: "
                f"{previous['model'].get(changed[0])!r} there, {current['model'].get(changed[0])!r} now); "
                "use a new --workdir or the same model config"
            )
    if jax.process_index() == 0:
        staged = path.with_name(f"{path.name}.tmp")
        staged.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        staged.replace(path)


def read_run_config(workdir: pathlib.Path) -> config_dict.ConfigDict:
    """The run config recorded in `workdir`; raises ValueError if there is none."""
    path = workdir / _CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: {workdir} is not a training workdir")
    return config_dict.ConfigDict(json.loads(path.read_text()))


def restore_params(
    workdir: pathlib.Path, abstract_params: dict[str, Any], step: int | None = None
) -> tuple[dict[str, Any], int]:
    """The params saved at `step` (default: the latest) in `workdir`, and that step.

    Reads only the params subtree of the train state (no optimizer state) into numpy arrays on the host, laid out as
    `abstract_params` (a nested dict of jax.ShapeDtypeStruct: `hybridlm.model.abstract_params(config)`). Raises
    ValueError if `workdir` has no checkpoints, or none at `step`.
    """
    directory = checkpoints_dir(workdir).absolute()
    if not directory.is_dir():
        raise ValueError(f"{workdir} has no checkpoints directory; train it first")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = manager.all_steps()
        if not steps:
            raise ValueError(f"{directory} holds no checkpoint; train the run past its first checkpoint")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"{directory} has no checkpoint at step {step}; it has steps {sorted(steps)}")
        target = {"params": abstract_params}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        state = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        restored = manager.restore(step, args=ocp.args.Composite(state=state))
    finally:
        manager.close()
    return restored.state["params"], step
