"""Runs for tests/test_partitioning.py in a process of its own with DEVICES CPU devices (the test process has one).

    python tests/mesh_runs.py DEVICES losses CONFIG_JSON MESHES_JSON STEPS
        -> {"<mesh json>": {"losses": [loss, ...], "shards": shard_shapes(...)}, ...}
    python tests/mesh_runs.py DEVICES train CONFIG_JSON MESH_JSON WORKDIR STEP
        -> trains in WORKDIR with the Trainer (resuming from its checkpoints), then {path: sha1 of the bytes} of the
           params saved at STEP, restored onto the mesh

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"

import hashlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_dict  # noqa: E402

from hybridlm import checkpoint, config_checks  # noqa: E402
from hybridlm.trainer import Trainer, TrainProgram  # noqa: E402


def configured(config_json: str, mesh: dict[str, int]) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict(json.loads(config_json))
    config.mesh.update(mesh)
    return config


def synthetic_batch(config: config_dict.ConfigDict, seed: int) -> dict[str, np.ndarray]:
    """Random tokens [batch, seq] with two documents per row."""
    rng = np.random.default_rng(seed)
    shape = (config.data.batch_size, config.data.seq_len + 1)
    tokens = rng.integers(0, config.model.vocab_size, shape, dtype=np.int32)
    segment_ids = (np.arange(config.data.seq_len) >= config.data.seq_len // 3).astype(np.int32)
    segment_ids = np.broadcast_to(segment_ids, (config.data.batch_size, config.data.seq_len))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ascontiguousarray(segment_ids)}


def losses_and_shards(config: config_dict.ConfigDict, steps: int) -> dict[str, object]:
    """The losses of `steps` train steps from the seed's initial state on fixed synthetic batches, and the shard
    shapes of the initial state."""
    program = TrainProgram(config, config_checks.validate(config))
    state = program.init_state()
    shards = shard_shapes(state)
    found = []
    for step in range(steps):
        state, metrics = program.train_step(state, program.put_batch(synthetic_batch(config, step)))
        found.append(float(metrics["loss"]))
    return {"losses": found, "shards": shards}


def shard_shapes(state: dict) -> dict[str, dict[str, list[list[int]]]]:
    """{"params" | "opt_state": {path: [global shape, the first device's shard shape]}} of a train state."""

    def shapes(tree) -> dict[str, list[list[int]]]:
        return {
            _name(path): [list(x.shape), list(x.addressable_shards[0].data.shape)]
            for path, x in jax.tree_util.tree_leaves_with_path(tree)
        }

    return {"params": shapes(state["params"]), "opt_state": shapes(state["opt_state"])}


def _name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def restored_digests(config: config_dict.ConfigDict, workdir: str, step: int) -> dict[str, str]:
    """{path: sha1 of the bytes} of the params saved at `step`, restored onto this config's mesh."""
    program = TrainProgram(config, config_checks.validate(config))
    checkpointer = checkpoint.Checkpointer(pathlib.Path(workdir), keep=10)
    state, _ = checkpointer.restore(step, program.abstract_state())
    checkpointer.close()
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    return {_name(path): hashlib.sha1(np.asarray(x).tobytes()).hexdigest() for path, x in leaves}


def main(mode: str, config_json: str, *args: str) -> object:
    if mode == "losses":
        meshes, steps = json.loads(args[0]), int(args[1])
        return {json.dumps(mesh): losses_and_shards(configured(config_json, mesh), steps) for mesh in meshes}
    if mode == "train":
        config, workdir = configured(config_json, json.loads(args[0])), args[1]
        Trainer(config, workdir).train()
        return restored_digests(config, workdir, int(args[2]))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[2:])))
