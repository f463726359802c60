"""Training metrics to a JSONL file and TensorBoard event files in the workdir."""

from __future__ import annotations

import json
import pathlib

import tensorboardX


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` lines to `workdir/metrics.jsonl` and scalars to `workdir/tensorboard`."""

    def __init__(self, workdir: pathlib.Path):
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()
