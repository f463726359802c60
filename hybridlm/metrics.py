"""Training metrics to a JSONL file and TensorBoard event files in the workdir, written by process 0 alone, and the
smoothed loss of the progress bar.

metrics.jsonl is strict JSON (RFC 8259) a line: a value that is not a finite number is written as the string
"nan", "inf" or "-inf" (Python's float() reads each back). A run resumed from a checkpoint at step s replays the
steps after s, so on start the records of steps after s are dropped, and TensorBoard is told to drop its events of
those steps (its purge_step): each step is logged once, by the run that produced the checkpoints kept.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable
from typing import Any

import jax
import tensorboardX

from hybridlm import checkpoint


def peak_device_bytes() -> int | None:
    """The largest allocator peak (bytes in use at once, since the process started) of this process's devices, or
    None where a device reports none (the CPU)."""
    stats = [device.memory_stats() for device in jax.local_devices()]
    if all(s and "peak_bytes_in_use" in s for s in stats):
        return max(s["peak_bytes_in_use"] for s in stats)
    return None


def _strict(value: Any) -> Any:
    """`value`, with a float that is not finite turned into "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def dumps(record: dict[str, Any]) -> str:
    """One line of strict JSON for a metrics record."""
    return json.dumps({key: _strict(value) for key, value in record.items()}, allow_nan=False)


def _records_up_to(path: pathlib.Path, step: int) -> list[str]:
    """The lines of the metrics file at `path` for steps up to `step`, rewritten as strict JSON; lines that are not
    JSON objects with a step (a line cut short when a run was killed) are dropped."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(dumps(record))
    return kept


def drop_records_after(path: pathlib.Path, step: int) -> None:
    """Keeps only the records of steps up to `step` in the metrics file at `path` (if there is one), replacing it in
    one step."""
    if not path.exists():
        return
    staged = path.with_name(f"{path.name}.tmp")
    staged.write_text("".join(f"{line}\n" for line in _records_up_to(path, step)), encoding="utf-8")
    staged.replace(path)


class LossEMA:
    """The progress bar's training loss: an exponential moving average over steps in which each step's loss weighs
    `1 - decay` (0.02: about the last 50 steps count), bias-corrected as Adam's moments are, so that it starts at
    the first loss instead of near 0. Non-finite losses (of skipped steps) are left out."""

    def __init__(self, decay: float = 0.98):
        self._decay = decay
        self._sum = 0.0  # the decayed sum of the losses, each times 1 - decay
        self._weight = 0.0  # the same sum of ones: 1 - decay^n after n losses

    def update(self, losses: Iterable[float]) -> float:
        """Takes in the losses of the steps since the last update, oldest first; returns the average (nan before
        the first finite loss)."""
        for loss in losses:
            if math.isfinite(loss):
                self._sum = self._decay * self._sum + (1 - self._decay) * loss
                self._weight = self._decay * self._weight + (1 - self._decay)
        return self._sum / self._weight if self._weight else math.nan


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` lines to the workdir's metrics file and scalars to its TensorBoard
    directory (`hybridlm.checkpoint.metrics_file`, `tensorboard_dir`). In a run of several processes only process 0
    opens them; on the others `write` and `close` do nothing (every process holds the same, replicated metrics).

    `resumed_at`: the step the run starts from; the records of later steps, left by an earlier run, are dropped.
    None keeps every record (for a writer that only appends).
    """

    def __init__(self, workdir: pathlib.Path, resumed_at: int | None = None):
        self._enabled = jax.process_index() == 0
        if self._enabled:
            path = checkpoint.metrics_file(workdir)
            if resumed_at is not None:
                drop_records_after(path, resumed_at)
            self._jsonl = open(path, "a", encoding="utf-8")
            self._tensorboard = tensorboardX.SummaryWriter(
                str(checkpoint.tensorboard_dir(workdir)), purge_step=None if resumed_at is None else resumed_at + 1
            )

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one record for `step` to both."""
        if not self._enabled:
            return
        self._jsonl.write(dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        self._jsonl.close()
        self._tensorboard.close()
