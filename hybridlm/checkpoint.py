"""Orbax checkpoints of the train state in `workdir/checkpoints`, and the run's config beside them."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp
from ml_collections import config_dict

from hybridlm.model.config import ConfigError


class Checkpointer:
    """Saves the train state and the data iterator's state every N steps (keeping the newest few) and restores the
    latest ones."""

    def __init__(self, workdir: pathlib.Path, keep: int):
        self._manager = ocp.CheckpointManager(
            (workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
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
    """Writes `workdir/config.json`; if one exists, refuses a model that differs from the one trained there."""
    path = workdir / "config.json"
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
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
