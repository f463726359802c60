"""Training metrics to a JSONL file and TensorBoard event files in the workdir, written by process 0 alone."""

from __future__ import annotations

import json
import pathlib

import jax
import tensorboardX

from hybridlm import checkpoint


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` lines to the workdir's metrics file and scalars to its TensorBoard
    directory (`hybridlm.checkpoint.metrics_file`, `tensorboard_dir`). In a run of several processes only process 0
    opens them; on the others `write` and `close` do nothing (every process holds the same, replicated metrics)."""

    def __init__(self, workdir: pathlib.Path):
        self._enabled = jax.process_index() == 0
        if self._enabled:
            self._jsonl = open(checkpoint.metrics_file(workdir), "a", encoding="utf-8")
            self._tensorboard = tensorboardX.SummaryWriter(str(checkpoint.tensorboard_dir(workdir)))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        self._jsonl.close()
        self._tensorboard.close()
