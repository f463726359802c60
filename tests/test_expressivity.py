"""tools/expressivity.py: a tiny grid trains and scores its cells, writes the results, table and plot, and a rerun
skips the finished cells."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRID = [
    "--task=parity",
    "--archs=transformer,gdn_beta02",
    "--seeds=0",
    "--steps=4",
    "--batch=4",
    "--width=16",
    "--heads=2",
    "--train_lengths=2,8",
    "--test_lengths=8,16",
    "--eval_examples=16",
]


def _run(out: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "tools/expressivity.py", f"--out={out}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_tiny_grid_writes_results_table_and_plot_and_a_rerun_skips_finished_cells(tmp_path):
    result = _run(tmp_path, *GRID)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    cells = [(r["task"], r["arch"], r["seed"]) for r in lines]
    assert cells == [("parity", "transformer", 0), ("parity", "gdn_beta02", 0)]
    assert all(set(r["accuracy"]) == {"8", "16"} and 0 <= r["accuracy"]["16"] <= 1 for r in lines)
    table = (tmp_path / "parity.md").read_text()
    assert "| transformer |" in table and "| gdn_beta02 |" in table and "<= 16" in table
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"
    rerun = _run(tmp_path, *GRID)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("done, skipped") == 2 and "training" not in rerun.stdout
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2


def test_an_unknown_architecture_fails_in_one_line(tmp_path):
    result = _run(tmp_path, "--task=parity", "--archs=mamba")
    assert result.returncode == 2 and result.stderr.startswith("error: --archs=mamba: not an architecture")
    assert result.stderr.strip().count("\n") == 0
