"""Several processes: two CPU processes of 4 devices each, joined into one jax.distributed cluster through the real
command line, train exactly as one process of 8 devices does, with process 0 alone reporting; the cluster flags fail
in one line before jax starts."""

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

import jax
import pytest

from conftest import small_config, write_config_file
from hybridlm import checkpoint
from hybridlm.metrics import MetricsWriter
from hybridlm.model.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
STEPS = 4
# The runtime's own lines when it aborts a process whose peer died, before the cluster watch decides: jax's when the
# kill cut a call to its coordination service; gloo's (the CPU collectives) when it cut one of the train step's.
RUNTIME_ABORTS = (
    "Terminating process because the JAX distributed service detected fatal errors",
    "terminate called after throwing an instance of 'gloo::EnforceNotMet'",
)


def run_config():
    """small_config with one attention layer (the quickest compile), 8 rows a batch (one per device), 4 steps, on a
    mesh of slices=2 (across the two processes) x fsdp=4 (parameters split over each process's devices)."""
    config = small_config(layer_pattern=("attn",))
    config.data.batch_size = 8
    config.mesh.update(slices=2, data=1, fsdp=-1)
    config.train.update(num_steps=STEPS, log_every=1, eval_every=STEPS, eval_batches=1, checkpoint_every=STEPS)
    return config


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> pathlib.Path:
    """A config file whose get_config() is `run_config()`."""
    return write_config_file(tmp_path_factory.mktemp("configs"), "test_multihost", "run_config", "multihost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(config_file: pathlib.Path, workdir: pathlib.Path, devices: int, *args: str) -> subprocess.Popen:
    """`python -m hybridlm.train` on `devices` CPU devices, in the background."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "hybridlm.train", f"--config={config_file}", f"--workdir={workdir}", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[str, str]:
    """The process's stdout and stderr once it has exited 0."""
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    return stdout, stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory, config_file) -> dict[str, object]:
    """The same run as processes 0 and 1 of a cluster (4 devices each, one workdir) and as one process of 8 devices,
    all started at once: their workdirs and each process's (stdout, stderr)."""
    root = tmp_path_factory.mktemp("runs")
    cluster = (f"--coordinator_address=localhost:{_free_port()}", "--num_processes=2")
    processes = [_launch(config_file, root / "cluster", 4, *cluster, f"--process_id={i}") for i in range(2)]
    processes.append(_launch(config_file, root / "single", 8))
    try:
        outputs = [_finish(process) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return {"cluster": root / "cluster", "single": root / "single", "outputs": outputs}


def _metrics(workdir: pathlib.Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in checkpoint.metrics_file(workdir).read_text().splitlines()]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in _metrics(workdir) if "loss" in m}


def test_two_processes_train_as_one_process_does(runs):
    cluster, single = _losses(runs["cluster"]), _losses(runs["single"])
    assert sorted(cluster) == list(range(1, STEPS + 1)) == sorted(single)
    assert cluster == pytest.approx(single, rel=1e-5)
    assert checkpoint.Checkpointer(runs["cluster"], keep=1).latest_step() == STEPS


def test_only_process_0_writes_and_reports(runs):
    cluster, single = runs["cluster"], runs["single"]
    assert sorted(p.name for p in cluster.iterdir()) == sorted(p.name for p in single.iterdir())
    assert len(_metrics(cluster)) == len(_metrics(single))  # no line twice
    assert len(list(checkpoint.tensorboard_dir(cluster).iterdir())) == 1  # one event file: one writer
    (stdout_0, stderr_0), (stdout_1, stderr_1) = runs["outputs"][:2]
    assert "unigram entropy" in stdout_0 and f"step {STEPS}: held-out loss" in stdout_0 and "train:" in stderr_0
    assert "unigram entropy" not in stdout_1 and "held-out loss" not in stdout_1 and "train:" not in stderr_1


def test_a_killed_process_stops_the_other_and_a_rerun_resumes(tmp_path, config_file):
    """kill -9 of process 1 mid-run: process 0 stops within a minute with exit 75 and a line saying what happened and
    how to resume (or aborted at once by the runtime with one of RUNTIME_ABORTS), rather than wait in a collective;
    the same command on both processes then resumes from the last checkpoint and finishes the run."""
    workdir, steps = tmp_path / "run", 60
    args = ("--num_processes=2", "--peer_timeout_s=5", f"--config.train.num_steps={steps}")
    args += ("--config.train.checkpoint_every=5", f"--config.train.eval_every={steps}")
    launch = lambda port: [  # noqa: E731
        _launch(config_file, workdir, 4, f"--coordinator_address=localhost:{port}", *args, f"--process_id={i}")
        for i in range(2)
    ]
    processes = launch(_free_port())
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while max(checkpoint.saved_steps(checkpoint.checkpoints_dir(workdir)), default=0) < 10:
            assert time.monotonic() < deadline and processes[0].poll() is None, processes[0].communicate()[1][-2000:]
            time.sleep(0.2)
        processes[1].kill()
        killed = time.monotonic()
        _, stderr = processes[0].communicate(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert time.monotonic() - killed < 60
    if processes[0].returncode == -signal.SIGABRT:  # the runtime's own end, before the watch's verdict
        before_dump = stderr.split("Fatal Python error")[0]  # for the message: the runtime's line, not the dump
        assert any(line in stderr for line in RUNTIME_ABORTS), before_dump[-2000:]
    else:
        assert processes[0].returncode == 75, stderr[-2000:]
        assert "error: process 1 of 2 has sent no heartbeat for 5 s: it has stopped, so process 0 stops too" in stderr
        assert f"it resumes from the last checkpoint in {workdir}" in stderr
    saved = checkpoint.saved_steps(checkpoint.checkpoints_dir(workdir))
    assert max(saved) < steps
    outputs = [_finish(process) for process in launch(_free_port())]
    # The last checkpoint, or the one before when the kill cut process 1's part of it short.
    resumed = re.search(r"resumed from the checkpoint at step (\d+)", outputs[0][0] + outputs[0][1])
    assert resumed and int(resumed.group(1)) in saved[:2], (saved, outputs[0])  # saved: newest first
    assert max(_losses(workdir)) == steps and checkpoint.Checkpointer(workdir, keep=1).latest_step() == steps


def test_other_processes_check_the_config_but_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    checkpoint.record_config(tmp_path, small_config())
    writer = MetricsWriter(tmp_path)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    checkpoint.record_config(tmp_path, small_config())
    other = small_config()
    other.model.d_model = 64
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with pytest.raises(ConfigError, match="config.model.d_model"):
        checkpoint.record_config(tmp_path, other)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id go together"),
        (
            ["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
            "--process_id=2 with --num_processes=2",
        ),
        (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], "is not host:port"),
    ],
)
def test_cluster_flags_fail_in_one_line(tmp_path, args, expected):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "hybridlm.train", "--config=tiny_hybrid", f"--workdir={workdir}", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not workdir.exists()


SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("tasks, expected", [(None, False), ("1", False), ("2", True)])
def test_only_a_launch_of_several_processes_joins_a_cluster(monkeypatch, tasks, expected):
    """No launcher, a SLURM step of one task, and one of two tasks: only the last joins a cluster by itself."""
    from hybridlm.train import _launched_as_one_of_several

    monkeypatch.delenv("OMPI_MCA_orte_hnp_uri", raising=False)
    for name, value in {**SLURM_STEP, "SLURM_NTASKS": tasks}.items():
        if tasks is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert _launched_as_one_of_several() is expected


class _Store:
    """A key-value store in memory, like jax.distributed's client; `frozen` processes' keys stop changing."""

    def __init__(self, frozen: set[str]):
        self.values, self.frozen = {}, frozen

    def key_value_set(self, key: str, value: str, allow_overwrite: bool) -> None:
        if not any(key.endswith(f"/{p}") for p in self.frozen):
            self.values[key] = value

    def key_value_try_get(self, key: str) -> str:
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: {key}")
        return self.values[key]


def _beat(store: _Store, key: str, beats: int = 12, interval_s: float = 0.05) -> None:
    for beat in range(beats):
        store.key_value_set(key, str(beat), allow_overwrite=True)
        time.sleep(interval_s)


def test_the_watch_ends_a_process_whose_peer_stops_and_spares_one_whose_peer_finished(monkeypatch, capsys):
    from hybridlm import cluster_watch

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    ended = []
    for frozen, finished in ((set(), False), ({"1"}, False), ({"1"}, True)):
        store = _Store(frozen)
        monkeypatch.setattr(cluster_watch, "_store", lambda: store)
        if finished:  # process 1 ended its run normally before going quiet
            store.values[cluster_watch._key(1)] = cluster_watch._DONE
        watch = cluster_watch.ClusterWatch("WORKDIR", interval_s=0.05, timeout_s=0.3, end=ended.append).start()
        if not frozen:  # process 1 alive: a thread bumps its counter as process 1 would
            threading.Thread(target=_beat, args=(store, cluster_watch._key(1))).start()
        watch.await_verdict()
        watch.finish()
        ended.append("-")
    assert ended == ["-", 75, "-", "-"], ended  # one verdict: the silent peer that did not finish
    assert capsys.readouterr().err.count("error: process 1 of 2 has sent no heartbeat for 0.3 s") >= 1
