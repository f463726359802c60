"""Throughput of a training run from its workdir: tokens/s (all devices and per device), MFU, step time and its
spread, and peak device memory, over the logged steps after a warm-up.

Run from the repository root:

    python tools/run_report.py --workdir=runs/olmo_hybrid_7b --skip_steps=10 [--write=BENCHMARKS.md]

It reads the run's metrics.jsonl and config.json (`hybridlm.checkpoint`). Each metrics record covers the steps since
the record before it (`train.log_every` of them), so the step times are those windows' means: train with
`--config.train.log_every=1` for the spread of single steps. Evaluations and checkpoint saves stay out of the windows.
Records at or before --skip_steps and the first record (its window holds the compile) are left out. Report an
unbroken run: the first record after a resume holds that start's compile too, and nothing in metrics.jsonl marks it
(the trainer drops the records of the steps it replays). Figures are medians over the records; the step time's spread
is its standard deviation and coefficient of variation (std / mean); peak memory is the largest `peak_memory_gib`
logged (the allocator peak of a device; absent on the CPU). --write appends the row to a file (BENCHMARKS.md) under a
dated heading with the command and commit; the workdir does not record the run's card, so say it beside the table.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
from collections.abc import Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other tools

import train_setup  # noqa: E402  (first: it puts the repo root on the path)
from absl import app, flags  # noqa: E402

from hybridlm import checkpoint  # noqa: E402

SKIP_STEPS = flags.DEFINE_integer("skip_steps", 0, "leave out the records of steps up to this one (warm-up)")

COLUMNS = (
    "workdir",
    "devices",
    "batch x seq",
    "steps",
    "tokens/s",
    "tokens/s/device",
    "MFU",
    "step ms (median)",
    "step ms std (CV)",
    "peak GiB/device",
)


@dataclasses.dataclass(frozen=True)
class Report:
    """A run's throughput over its kept metrics records."""

    devices: int
    batch_size: int
    seq_len: int
    steps: int  # steps the kept records cover
    tokens_per_s: float
    mfu: float | None
    step_ms: list[float]  # one per kept record: its window's mean step time
    peak_gib: float | None

    def cells(self, name: str) -> list[str]:
        """The table row, one cell per COLUMNS entry."""
        mean, std = statistics.fmean(self.step_ms), statistics.pstdev(self.step_ms)
        return [
            name,
            str(self.devices),
            f"{self.batch_size} x {self.seq_len}",
            str(self.steps),
            f"{self.tokens_per_s:,.0f}",
            f"{self.tokens_per_s / self.devices:,.0f}",
            "-" if self.mfu is None else f"{self.mfu:.1%}",
            f"{statistics.median(self.step_ms):.1f}",
            f"{std:.1f} ({std / mean:.1%})",
            "-" if self.peak_gib is None else f"{self.peak_gib:.3g}",
        ]


def read_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The training records among the lines of a metrics.jsonl (those with tokens_per_sec; eval lines are left
    out)."""
    records = [json.loads(line) for line in lines if line.strip()]
    return [record for record in records if "tokens_per_sec" in record]


def report(records: list[dict[str, Any]], batch_size: int, seq_len: int, skip_steps: int) -> Report:
    """The throughput of the records after step `skip_steps`, the first record (its window holds the compile) left
    out. Raises ValueError when no record is left."""
    kept = [
        (record, record["step"] - before["step"])
        for before, record in zip(records, records[1:])
        if record["step"] > skip_steps
    ]
    if not kept:
        raise ValueError(
            f"no metrics records after step {skip_steps} but the first: train longer or lower --skip_steps"
        )
    tokens_per_step = batch_size * seq_len
    rates = [record["tokens_per_sec"] for record, _ in kept]
    mfus = [record["mfu"] for record, _ in kept if "mfu" in record]
    peaks = [record["peak_memory_gib"] for record, _ in kept if "peak_memory_gib" in record]
    last = kept[-1][0]
    return Report(
        devices=round(last["tokens_per_sec"] / last["tokens_per_sec_per_device"]),
        batch_size=batch_size,
        seq_len=seq_len,
        steps=sum(steps for _, steps in kept),
        tokens_per_s=statistics.median(rates),
        mfu=statistics.median(mfus) if mfus else None,
        step_ms=[1e3 * tokens_per_step / rate for rate in rates],
        peak_gib=max(peaks) if peaks else None,
    )


def main(argv: list[str]) -> None:
    del argv
    if flags.FLAGS.workdir is None:  # the training command's flag (hybridlm.train, through train_setup)
        raise SystemExit("error: give --workdir=DIR, a training run's workdir")
    workdir = pathlib.Path(flags.FLAGS.workdir)
    metrics = checkpoint.metrics_file(workdir)
    if not metrics.exists():
        raise SystemExit(f"error: --workdir={workdir}: no {metrics.name} there; is it a training run's workdir?")
    config = checkpoint.read_run_config(workdir)
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
        result = report(read_records(lines), config.data.batch_size, config.data.seq_len, SKIP_STEPS.value)
    except ValueError as error:
        raise SystemExit(f"error: --workdir={workdir}: {error}") from None
    row = result.cells(workdir.name)
    print("\n".join(train_setup.text_table(COLUMNS, [row])))
    if train_setup.WRITE.value:
        command = " ".join(["python tools/run_report.py", *sys.argv[1:]])
        with open(train_setup.WRITE.value, "a") as f:
            f.write(f"\n## Training run {workdir.name}, {datetime.date.today()}\n\n")
            f.write(f"`{command}` at commit {train_setup.git_commit()}\n\n")
            f.write(train_setup.markdown_head(COLUMNS) + train_setup.markdown_row(row, len(COLUMNS)))


if __name__ == "__main__":
    app.run(main)
