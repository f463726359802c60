"""tools/expressivity.py: a tiny grid trains and scores its cells with the task arguments given, writes the results
(which record those arguments and the matched parameter counts), table and plot, and a rerun skips the finished
cells; the architectures' parameter counts match; bad task arguments fail in one line."""

import json
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASK_ARGS = "code:train_min=2,train_max=4,test_max=8,num_variables=3,num_queries=2"
GRID = [
    "--task=code",
    f"--task_args={TASK_ARGS}",
    "--archs=transformer,gdn_beta02",
    "--seeds=0",
    "--steps=4",
    "--batch=4",
    "--width=16",
    "--heads=2",
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
    assert cells == [("code", "transformer", 0), ("code", "gdn_beta02", 0)]
    args = dict(train_min=2, train_max=4, test_max=8, num_variables=3, num_queries=2)
    assert all(r["task_args"] == args for r in lines)
    assert all(set(r["accuracy"]) == {"4", "8"} and 0 <= r["accuracy"]["8"] <= 1 for r in lines)
    for arch in ("transformer", "gdn_beta02"):  # the training examples were built with the task arguments
        config = json.loads((tmp_path / "runs" / "code" / arch / "seed0" / "config.json").read_text())
        assert config["data"]["task_args"] == dict(min_len=2, max_len=4, num_variables=3, num_queries=2)
    params = [r["params"] for r in lines]
    assert max(params) <= 1.02 * min(params) and lines[0]["mlp_hidden"] != lines[1]["mlp_hidden"]
    table = (tmp_path / "code.md").read_text()
    assert "trained on lengths 2-4, tested on 2-8; num_variables=3, num_queries=2" in table and "<= 8" in table
    assert f"| transformer | {params[0]:,} | {lines[0]['mlp_hidden']} |" in table
    assert f"| gdn_beta02 | {params[1]:,} | {lines[1]['mlp_hidden']} |" in table
    assert (tmp_path / "code.png").read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "jax_cache").iterdir())  # the compiled programs, for the next seed
    rerun = _run(tmp_path, *GRID)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("done, skipped") == 2 and "training" not in rerun.stdout
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2


def test_jobs_split_the_grid_over_processes_and_the_parent_writes_the_table(tmp_path):
    result = _run(tmp_path, *GRID, "--jobs=2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["arch"] for r in lines) == ["gdn_beta02", "transformer"]  # each cell once, by one of the two
    assert result.stdout.count("seed 0: training") == 2 and "| gdn_beta02 |" in (tmp_path / "code.md").read_text()
    for bad, message in [
        (["--jobs=2", "--shard=0/2"], "error: --jobs=2: give 1 or more processes, and no --shard with more than 1"),
        (["--shard=2/2"], "error: --shard=2/2 is not i/n with 0 <= i < n"),
    ]:
        failed = _run(tmp_path, *GRID, *bad)
        assert failed.returncode == 2 and failed.stderr.startswith(message), failed.stderr


def test_a_sigterm_stops_every_process_and_the_tables_hold_the_finished_cells(tmp_path):
    """SIGTERM to the command once the first cell is in results.jsonl (as `timeout` sends it): both processes stop,
    the command fails naming them, and the table is written from the cells that finished."""
    command = [sys.executable, "tools/expressivity.py", f"--out={tmp_path}", *GRID, "--seeds=0,1,2", "--jobs=2"]
    grid = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 240
    while not (results.exists() and results.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    grid.send_signal(signal.SIGTERM)
    _, stderr = grid.communicate(timeout=240)
    finished = results.read_text().splitlines()
    assert grid.returncode == 2 and "failed (their errors are above)" in stderr, stderr
    assert 1 <= len(finished) < 6  # 2 architectures x 3 seeds
    table = (tmp_path / "code.md").read_text()
    seeds = [int(line.split("|")[4]) for line in table.splitlines() if line.startswith(("| transformer", "| gdn"))]
    assert sum(seeds) == len(finished)


def test_the_five_architectures_match_in_parameter_count_at_the_default_shape():
    script = (
        "import json, sys; sys.path.insert(0, 'tools'); import expressivity as e\n"
        "shape = dict(vocab_size=e.VOCAB_SIZE, width=128, depth=4, heads=4)\n"
        "hidden = e.matched_mlp_hidden(**shape)\n"
        "print(json.dumps({a: e.count(a, hidden[a], **shape) for a in e.ARCHITECTURES}))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert len(counts) == 5 and max(counts.values()) <= 1.02 * min(counts.values())


def test_an_unknown_architecture_fails_in_one_line(tmp_path):
    result = _run(tmp_path, "--task=parity", "--archs=mamba")
    assert result.returncode == 2 and result.stderr.startswith("error: --archs=mamba: not an architecture")
    assert result.stderr.strip().count("\n") == 0


def test_task_arguments_the_task_refuses_fail_in_one_line_before_training(tmp_path):
    for bad, message in [
        ("parity:num_pairs=3", "error: --task_args for parity:"),
        ("parity:train_max=300", "error: --task_args for parity: need 1 <= train_min <= train_max <= test_max"),
        ("parity=train_max", "error: --task_args=parity=train_max: give TASK:KEY=VALUE"),
    ]:
        result = _run(tmp_path, "--task=parity", f"--task_args={bad}")
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "runs").exists()
