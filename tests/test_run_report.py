"""tools/run_report.py: a run's throughput from its metrics records (the warm-up and the compile's record left out),
and its command on a workdir."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import load_tool

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    return load_tool("run_report")


def _record(step: int, tokens_per_sec: float, **more: float) -> dict:
    return {
        "step": step,
        "loss": 3.0,
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_per_device": tokens_per_sec / 4,
        **more,
    }


def test_the_report_keeps_the_steps_after_the_warm_up_and_the_compile(tool):
    """Steps 1-4 logged every step and 6 and 8 every two: --skip_steps 1 and the first record (the compile) are left
    out, an eval line is not a training record, and each record's step time is its window's mean."""
    rates = {1: 10.0, 2: 900.0, 3: 1000.0, 4: 1100.0, 6: 1000.0, 8: 1200.0}
    records = [_record(s, r, mfu=r / 2000, peak_memory_gib=10.0 + s) for s, r in rates.items()]
    records.insert(3, {"step": 3, "eval_loss": 2.5})
    lines = [json.dumps(r) for r in records]
    report = tool.report(tool.read_records(lines), batch_size=4, seq_len=256, skip_steps=1)
    assert report.steps == 7 and report.devices == 4  # steps 2-8
    assert report.tokens_per_s == 1000.0 and report.mfu == 0.5
    assert report.step_ms == pytest.approx([1e3 * 1024 / r for r in (900.0, 1000.0, 1100.0, 1000.0, 1200.0)])
    assert report.peak_gib == 18.0
    row = report.cells("run")
    assert row[:7] == ["run", "4", "4 x 256", "7", "1,000", "250", "50.0%"] and row[7] == "1024.0"
    with pytest.raises(ValueError, match="no metrics records after step 8 but the first"):
        tool.report(tool.read_records(lines), batch_size=4, seq_len=256, skip_steps=8)
    one = tool.report(tool.read_records(lines[:2]), batch_size=4, seq_len=256, skip_steps=0)
    assert one.steps == 1 and one.tokens_per_s == 900.0  # the compile's record is never kept


def test_the_command_reports_a_workdir_and_refuses_a_directory_without_metrics(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"model": {}, "data": {"batch_size": 2, "seq_len": 64}}))
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(_record(s, 500.0 + s)) for s in range(1, 6)) + "\n")
    out = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "tools/run_report.py", f"--workdir={workdir}", "--skip_steps=1", f"--write={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| run | 4 | 2 x 64 | 4 | 504 | 126 | - |" in out.read_text() and "## Training run run, " in out.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([*command[:2], f"--workdir={empty}"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        f"error: --workdir={empty}: no metrics.jsonl there; is it a training run's workdir?"
    )
