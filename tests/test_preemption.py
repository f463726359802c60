"""Preemption through the real command line: SIGTERM and SIGINT while the run starts up, during the first step, mid-run
and during checkpoint saves (again and again while it stops) end it with exit code 143 or 130, one line, and a
checkpoint at the last step it logged; rerunning the command then gives an unbroken run's losses bit for bit. The two
processes of a cluster stop at the same step when one of them gets SIGTERM or SIGINT (slow). config.train.
checkpoint_minutes saves on the clock. tools/soak.py passes a short soak, and its comparisons catch a loss one bit
off."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple

import numpy as np
import pytest

from conftest import load_tool, small_config, write_config_file
from hybridlm import preemption, config_checks
from hybridlm.model.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 60
TIMEOUT_S = 120
POLL_S = 0.005
STOPPED = re.compile(  # the line a stopped run ends with: the signal, and the step it trained to or started from
    r"stopped by (SIG\w+)(?: to one of the processes)? (?:at step (\d+); checkpoint saved in \S+|"
    r"before training from step (\d+); nothing new to save); rerun the same command to resume"
)


def run_config():
    """small_config with one attention layer (the quickest compile), STEPS steps, each logged."""
    config = small_config(layer_pattern=("attn",))
    config.train.update(num_steps=STEPS, log_every=1, eval_every=20, eval_batches=1, checkpoint_every=20)
    return config


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> pathlib.Path:
    """A config file whose get_config() is `run_config()`."""
    return write_config_file(tmp_path_factory.mktemp("configs"), "test_preemption", "run_config", "preemption")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The runs' environment: the CPU, unbuffered output, and one compilation cache, so only the first run compiles."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "PYTHONUNBUFFERED": "1",
    }


class Training:
    """`python -m hybridlm.train` in the background, its output (stdout and stderr) read line by line on a thread."""

    def __init__(self, env: dict[str, str], config_file: pathlib.Path, workdir: pathlib.Path, *args: str):
        command = [sys.executable, "-m", "hybridlm.train", f"--config={config_file}", f"--workdir={workdir}", *args]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Polls `condition` until it holds; fails if the run exits first or takes longer than TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            exit_code = self.process.poll()
            assert exit_code is None, f"the run exited ({exit_code}) before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s:\n{self.output}"
            time.sleep(POLL_S)

    def finish(self) -> int:
        """Waits for the run to exit; returns its exit code."""
        self.process.wait(TIMEOUT_S)
        self._reader.join(TIMEOUT_S)
        return self.process.returncode


def _losses(workdir: pathlib.Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged training step, in the order logged."""
    path = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _last_logged(workdir: pathlib.Path) -> int:
    losses = _losses(workdir)
    return losses[-1][0] if losses else 0


def _newest_checkpoint(workdir: pathlib.Path) -> int:
    directory = workdir / "checkpoints"
    return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=0) if directory.is_dir() else 0


def _saving(workdir: pathlib.Path) -> bool:
    """Whether orbax is writing a checkpoint: a temporary step directory, renamed into place when it commits."""
    directory = workdir / "checkpoints"
    return directory.is_dir() and any("tmp" in p.name for p in directory.iterdir())


def _assert_stopped(run: Training, workdir: pathlib.Path, stop: signal.Signals) -> int:
    """The run exited with 128 + the signal's number and one line saying where it stopped: the last step it logged
    and the newest checkpoint. Returns that step."""
    exit_code = run.finish()
    output = run.output
    lines = STOPPED.findall(output)
    assert exit_code == 128 + stop and len(lines) == 1, f"exit code {exit_code}:\n{output}"
    name, trained_to, start = lines[0]
    step = int(trained_to or start)
    assert name == stop.name and step == _last_logged(workdir) == _newest_checkpoint(workdir) < STEPS, output
    return step


class Reference(NamedTuple):
    """The unbroken run: its workdir and the (step, loss) of every step."""

    workdir: pathlib.Path
    losses: list[tuple[int, float]]


def _finish_and_compare(env, config_file, workdir: pathlib.Path, reference: Reference) -> None:
    """Reruns the command to the end: every step was logged once, with the unbroken run's loss, bit for bit."""
    run = Training(env, config_file, workdir)
    assert run.finish() == 0, run.output
    assert _losses(workdir) == reference.losses


@pytest.fixture(scope="module")
def reference(env, config_file, tmp_path_factory) -> Reference:
    workdir = tmp_path_factory.mktemp("unbroken")
    run = Training(env, config_file, workdir)
    assert run.finish() == 0, run.output
    losses = _losses(workdir)
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    return Reference(workdir, losses)


def test_sigterm_while_starting_up_and_mid_run(env, config_file, reference, tmp_path):
    """SIGTERM once the data is loaded (config.json written): nothing trained, nothing saved, or the first step saved
    if the signal came after the run's first check. SIGTERM mid-run: a checkpoint at the step it reached."""
    run = Training(env, config_file, tmp_path)
    run.wait_until(lambda: (tmp_path / "config.json").exists(), "config.json")
    run.process.send_signal(signal.SIGTERM)
    assert _assert_stopped(run, tmp_path, signal.SIGTERM) <= 1

    started = _last_logged(tmp_path)
    run = Training(env, config_file, tmp_path)
    run.wait_until(lambda: _last_logged(tmp_path) >= started + 5, "5 steps")
    run.process.send_signal(signal.SIGTERM)
    assert _assert_stopped(run, tmp_path, signal.SIGTERM) >= started + 5
    _finish_and_compare(env, config_file, tmp_path, reference)


def test_sigint_during_the_first_step_and_during_saves(env, config_file, reference, tmp_path):
    """SIGINT as the first step compiles (or loads from the cache): stops after it. SIGINT while a checkpoint is being
    written every step, then again every few milliseconds until the run has stopped: the later ones are ignored and
    the last save is whole."""
    run = Training(env, config_file, tmp_path)
    run.wait_until(lambda: "unigram entropy" in run.output, "the line before the first step")
    run.process.send_signal(signal.SIGINT)
    _assert_stopped(run, tmp_path, signal.SIGINT)

    started = _last_logged(tmp_path)
    run = Training(env, config_file, tmp_path, "--config.train.checkpoint_every=1")
    run.wait_until(lambda: _last_logged(tmp_path) >= started + 5 and _saving(tmp_path), "a save after 5 steps")
    while run.process.poll() is None and not STOPPED.search(run.output):
        run.process.send_signal(signal.SIGINT)
        time.sleep(0.02)
    assert _assert_stopped(run, tmp_path, signal.SIGINT) >= started + 5
    assert "SIGINT ignored: already stopping after SIGINT" in run.output
    _finish_and_compare(env, config_file, tmp_path, reference)


def test_checkpoint_timer(monkeypatch):
    """Due once the minutes have passed since the last checkpoint (or the start), never with None; a value that is
    not positive is refused."""
    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    timer = preemption.CheckpointTimer(0.5)
    now[0] += 29.9
    assert not timer.due()
    now[0] += 0.1
    assert timer.due()
    timer.restart()
    assert not timer.due()
    now[0] += 1e6
    assert not preemption.CheckpointTimer(None).due()
    config = run_config()
    config.train.checkpoint_minutes = 0.0
    with pytest.raises(ConfigError, match=r"config.train.checkpoint_minutes=0.0 must be positive"):
        config_checks.validate(config)


def test_checkpoint_minutes_saves_at_log_steps(env, config_file, tmp_path):
    """With checkpoint_minutes that have always passed, a run saves at every log step, not only every
    checkpoint_every steps."""
    overrides = ["--config.train.checkpoint_minutes=1e-9", "--config.train.log_every=5"]
    overrides += ["--config.train.checkpoint_every=1000", "--config.train.keep_checkpoints=100"]
    run = Training(env, config_file, tmp_path, *overrides)
    assert run.finish() == 0, run.output
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == list(range(5, STEPS + 1, 5))


def test_soak_tool_passes(env, config_file, reference, tmp_path):
    """tools/soak.py for a fifth of a minute against the unbroken run: kills, restarts, then the losses of every step
    run and the final parameters match."""
    command = [sys.executable, str(ROOT / "tools" / "soak.py"), f"--config={config_file}", "--minutes=0.2"]
    command += ["--interval=2,4", f"--dir={tmp_path}", f"--reference={reference.workdir}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and f"\nPASS: {STEPS} steps;" in result.stdout, result.stdout + result.stderr
    assert int(re.search(r"kills survived: (\d+)", result.stdout).group(1)) >= 2, result.stdout


def test_soak_comparisons(reference):
    """The soak's loss check passes a step logged twice with the same loss and names one whose loss is a bit off;
    steps lost count from each killed run's last step to where the next run that got to training resumed."""
    soak = load_tool("soak")
    step, loss = reference.losses[-1]
    same = {s: {soak._bits(x): x} for s, x in reference.losses}
    assert soak.loss_mismatches(same, reference.workdir) == []
    off = float(np.nextafter(np.float32(loss), np.float32(np.inf)))
    same[step][soak._bits(off)] = off
    expected = f"step {step}: loss {off!r}, the unbroken run's {loss!r}"
    assert soak.loss_mismatches(same, reference.workdir) == [expected]
    runs = [
        soak.Run(1, "SIGKILL", -9, 0, 7),  # resumed from 5 by run 3: 2 steps lost
        soak.Run(2, "SIGTERM", -15, None, None),
        soak.Run(3, "SIGTERM", 143, 5, 8),
        soak.Run(4, "SIGKILL", -9, 8, 10),  # resumed from 8 by run 5: 2 steps lost
        soak.Run(5, None, 0, 8, 11),
    ]
    assert soak.steps_lost(runs) == {"SIGTERM": 0, "SIGKILL": 2 + 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cluster(env, config_file, workdir: pathlib.Path) -> list[Training]:
    """The run as the two processes of a jax.distributed cluster (one CPU device each, one workdir)."""
    flags = (f"--coordinator_address=localhost:{_free_port()}", "--num_processes=2")
    return [Training(env, config_file, workdir, *flags, f"--process_id={i}") for i in range(2)]


@pytest.mark.slow
def test_a_cluster_stops_at_one_step(env, config_file, tmp_path):
    """SIGTERM to process 1 (JAX's preemption notifier takes it), then in a rerun SIGINT to process 0 (passed on to
    it as SIGTERM): both processes stop after the same step, which the checkpoint holds; a third run finishes with
    every step logged once."""
    for target, stop in ((1, signal.SIGTERM), (0, signal.SIGINT)):
        started = _last_logged(tmp_path)
        processes = _cluster(env, config_file, tmp_path)
        processes[0].wait_until(lambda: _last_logged(tmp_path) >= started + 5, "5 steps")
        processes[target].process.send_signal(stop)
        stops = [stop if i == target else signal.SIGTERM for i in range(2)]  # the other: "SIGTERM to one of ..."
        steps = [_assert_stopped(process, tmp_path, own) for process, own in zip(processes, stops)]
        assert steps[0] == steps[1] >= started + 5
    processes = _cluster(env, config_file, tmp_path)
    assert [p.finish() for p in processes] == [0, 0]
    assert [step for step, _ in _losses(tmp_path)] == list(range(1, STEPS + 1))
