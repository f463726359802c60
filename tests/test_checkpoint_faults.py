"""Checkpoint and workdir faults: damaged checkpoints (each falls back to the newest intact one and trains on to the
unbroken run's losses bit for bit), a full disk and a read-only workdir (one line, exit 2), one run per workdir,
resumes that change the optimizer, and metrics.jsonl that stays strict JSON without records of replayed steps.

The damaged-checkpoint runs reuse the reference run's data and compiled program (patched into hybridlm.trainer):
the same objects a fresh Trainer would build for the same config, minus the compile time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

import jax
import pytest
from ml_collections import config_dict

from conftest import small_config, write_config_file
from hybridlm import checkpoint, trainer as trainer_module
from hybridlm.metrics import MetricsWriter, drop_records_after
from hybridlm.model.config import ConfigError
from hybridlm.trainer import Trainer
from hybridlm.workdir_lock import LOCK_FILE, WorkdirError, WorkdirLock

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 9  # checkpoints at 3, 6 and 9
TIMING_KEYS = ("tokens_per_sec", "tokens_per_sec_per_device", "mfu", "peak_memory_gib")  # differ between runs


def _config() -> config_dict.ConfigDict:
    """small_config trained for 9 steps with a checkpoint and an evaluation every 3."""
    config = small_config()
    config.train.update(num_steps=STEPS, checkpoint_every=3, eval_every=3)
    return config


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> pathlib.Path:
    """A config file whose get_config() is _config(), for the command line."""
    return write_config_file(tmp_path_factory.mktemp("configs"), "test_checkpoint_faults", "_config", "faults")


def _train_cli(
    config_file: pathlib.Path, workdir: pathlib.Path, *args: str, **popen: Any
) -> subprocess.CompletedProcess:
    """`python -m hybridlm.train` with the config file, the workdir and `args`, run to its end."""
    command = [sys.executable, "-m", "hybridlm.train", f"--config={config_file}", f"--workdir={workdir}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, **popen)


def _error_line(result: subprocess.CompletedProcess, alone: bool = True) -> str:
    """The run's one `error:` line, after exit code 2; `alone`: the only line on stderr."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    if alone:
        assert result.stderr.strip() == errors[0], result.stderr[-3000:]
    return errors[0]


def _strict_json(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in metrics.jsonl: {line}")

    return json.loads(line, parse_constant=refuse)


def _records(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records in order, strict JSON, without the timing figures (which vary from run to run)."""
    lines = checkpoint.metrics_file(workdir).read_text().splitlines()
    return [{k: v for k, v in _strict_json(line).items() if k not in TIMING_KEYS} for line in lines]


@dataclasses.dataclass(frozen=True)
class Reference:
    """The unbroken run: its workdir and the data and compiled program it trained with."""

    workdir: pathlib.Path
    data: Any
    program: trainer_module.TrainProgram


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    workdir = tmp_path_factory.mktemp("reference") / "run"
    trainer = Trainer(_config(), workdir)
    trainer.train()
    return Reference(workdir, trainer.data, trainer.program)


@pytest.fixture
def stopped_run(reference, tmp_path, monkeypatch) -> pathlib.Path:
    """A copy of the reference run as it was killed after logging step 9 but before checkpoint 9 was committed:
    checkpoints 3 and 6 and metrics up to step 9. Trainers built here reuse the reference's data and program."""
    workdir = tmp_path / "run"
    shutil.copytree(reference.workdir, workdir)
    shutil.rmtree(checkpoint.checkpoints_dir(workdir) / str(STEPS))
    monkeypatch.setattr(trainer_module, "load_data", lambda config: reference.data)
    monkeypatch.setattr(trainer_module, "TrainProgram", lambda config, model_config: reference.program)
    return workdir


# Damaged checkpoints. Each variant gets checkpoints/ (holding 3 and 6) and damages it.


def _biggest_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest file of a checkpoint: a data file of orbax's OCDBT store (the optimizer state's arrays)."""
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _rewrite(path: pathlib.Path, transform: Callable[[bytes], bytes]) -> None:
    path.write_bytes(transform(path.read_bytes()))


def _garbage(data: bytes) -> bytes:
    return bytes((b * 7 + 13) % 256 for b in data)  # same length, every byte changed


def _flip_one_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _iterator_behind(checkpoints: pathlib.Path) -> None:
    """Rewrites checkpoint 6's data state with the iterator at batch 5, and its checksums to match, as a buggy save
    would leave it: only the cross-check of the iterator against the step can tell."""
    step_dir = checkpoints / "6"
    data_file = step_dir / "data" / "metadata"
    data_state = json.loads(data_file.read_text())
    data_state["iterator"]["next_index"] = 5
    data_file.write_text(json.dumps(data_state))
    checkpoint.write_checksums(step_dir, 6)


def _sizes_only(checkpoints: pathlib.Path) -> None:
    """Drops the CRC-32s from checkpoint 6's checksums.json, as a run killed while they were computed leaves it."""
    path = checkpoints / "6" / checkpoint.CHECKSUMS_FILE
    recorded = json.loads(path.read_text())
    for entry in recorded["files"].values():
        del entry["crc32"]
    path.write_text(json.dumps(recorded))


def _empty_directory(path: pathlib.Path) -> None:
    shutil.rmtree(path)
    path.mkdir()


# id -> (what to do to checkpoints/, the step resumed from, what the one-line report says; None: no report)
VARIANTS: dict[str, tuple[Callable[[pathlib.Path], None], int, str | None]] = {
    "data_file_deleted": (lambda c: _biggest_file(c / "6").unlink(), 3, "is missing"),
    "data_file_truncated": (lambda c: _rewrite(_biggest_file(c / "6"), lambda b: b[: len(b) // 2]), 3, "bytes,"),
    "data_file_emptied": (lambda c: _biggest_file(c / "6").write_bytes(b""), 3, "has 0 bytes"),
    "data_file_garbage": (lambda c: _rewrite(_biggest_file(c / "6"), _garbage), 3, "does not match its CRC-32"),
    "one_bit_flipped": (lambda c: _rewrite(_biggest_file(c / "6"), _flip_one_byte), 3, "does not match its CRC-32"),
    "array_metadata_deleted": (lambda c: (c / "6" / "state" / "_METADATA").unlink(), 3, "state/_METADATA is missing"),
    "ocdbt_manifest_garbage": (
        lambda c: _rewrite(c / "6" / "state" / "manifest.ocdbt", _garbage),
        3,
        "state/manifest.ocdbt does not match",
    ),
    "step_metadata_deleted": (lambda c: (c / "6" / "_CHECKPOINT_METADATA").unlink(), 3, "(_CHECKPOINT_METADATA is"),
    "data_state_garbage": (lambda c: _rewrite(c / "6" / "data" / "metadata", _garbage), 3, "data/metadata does not"),
    "iterator_behind_step": (_iterator_behind, 3, "its data iterator is at batch 5, not 6"),
    "checksums_missing": (lambda c: (c / "6" / checkpoint.CHECKSUMS_FILE).unlink(), 3, "its save did not finish"),
    "checksums_garbage": (
        lambda c: (c / "6" / checkpoint.CHECKSUMS_FILE).write_bytes(b"\x00{garbage"),
        3,
        "checksums.json is unreadable",
    ),
    "state_directory_deleted": (lambda c: shutil.rmtree(c / "6" / "state"), 3, "more files)"),
    "extra_file": (lambda c: (c / "6" / "state" / "stray.bin").write_bytes(b"x"), 3, "stray.bin is not in its"),
    "step_directory_emptied": (lambda c: _empty_directory(c / "6"), 3, "it is empty"),
    "stray_empty_step_directory": (lambda c: (c / "9").mkdir(), 6, "it is empty"),
    "stray_file_named_as_step": (lambda c: (c / "9").write_text("x"), 6, "it is not a directory"),
    "uncommitted_save_left_behind": (
        lambda c: shutil.copytree(c / "6", c / "9.orbax-checkpoint-tmp-1700000000"),
        6,
        None,
    ),
    "checksums_without_crcs": (_sizes_only, 6, None),
}


@pytest.mark.parametrize("damage, resumed, report", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_damaged_checkpoint_falls_back_and_training_matches(
    reference, stopped_run, capsys, damage, resumed: int, report: str | None
):
    """The damaged newest checkpoint is reported in one line and moved aside, the run resumes from the newest
    intact one, and trains to the unbroken run's metrics bit for bit, each step's records once."""
    checkpoints = checkpoint.checkpoints_dir(stopped_run)
    damage(checkpoints)
    Trainer(_config(), stopped_run).train()
    out = capsys.readouterr().out
    reports = [line for line in out.splitlines() if "is not intact" in line]
    if report is None:
        assert reports == []
    else:
        assert len(reports) == 1 and report in reports[0], out
        assert len(list(checkpoints.glob(f"{resumed + 3}.corrupt-*"))) == 1
    assert f"resumed from the checkpoint at step {resumed} in" in out
    assert _records(stopped_run) == _records(reference.workdir)
    assert [checkpoint.checkpoint_problem(checkpoints / str(s), s) for s in (3, 6, 9)] == [None] * 3


def test_no_intact_checkpoint_is_one_clear_error(config_file, stopped_run):
    """Every checkpoint damaged: one line naming each one's problem, exit 2, nothing trained or moved."""
    checkpoints = checkpoint.checkpoints_dir(stopped_run)
    (checkpoints / "6" / checkpoint.CHECKSUMS_FILE).unlink()
    _empty_directory(checkpoints / "3")
    before = checkpoint.metrics_file(stopped_run).read_text()
    error = _error_line(_train_cli(config_file, stopped_run))
    assert error.startswith(f"error: no intact checkpoint in {checkpoints} (step 6: it has no checksums.json")
    assert "step 3: it is empty" in error and "use a new --workdir" in error
    assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "6"]
    assert checkpoint.metrics_file(stopped_run).read_text() == before


# Storage faults.


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, options: str) -> Iterator[bool]:
    """Mounts a tmpfs with `options` at `path` when this process may (root with CAP_SYS_ADMIN); yields whether it
    did, and unmounts it after."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: files the child writes stop at `limit` bytes, and writing past it fails with EFBIG rather
    than killing the child with SIGXFSZ (an ignored signal stays ignored across exec)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_stops_the_run_within_a_step(config_file, tmp_path):
    """The first checkpoint does not fit: a small tmpfs where this test may mount one, else a 100 kB file-size
    limit. The run stops with one line and exit 2 at the first step after the background save fails, not at the
    next checkpoint (6): steps take ~0.5 s at batch 256, several times the ~0.2 s the failure takes to surface, so
    step 4 is the last one trained; 5 leaves room for a machine where the failure takes longer than a step."""
    args = ("--config.data.batch_size=256", "--config.train.num_steps=30")
    with _tmpfs(tmp_path / "disk", "size=300k") as mounted:
        workdir = tmp_path / "disk" / "run"
        result = _train_cli(config_file, workdir, *args, preexec_fn=None if mounted else _file_size_limit(100_000))
        error = _error_line(result, alone=False)  # orbax and tensorstore log their own tracebacks of the failure
        cause = "No space left on device" if mounted else "File too large"
        assert error.startswith(f"error: saving the checkpoint at step 3 in {workdir / 'checkpoints'} failed ({cause})")
        assert max(record["step"] for record in _records(workdir)) <= 5
        assert checkpoint.saved_steps(checkpoint.checkpoints_dir(workdir)) == []


def test_a_read_only_workdir_is_refused_before_anything_compiles(config_file, tmp_path):
    """A read-only tmpfs when this test may mount one (root ignores file modes), else a directory without write
    permission."""
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as mounted:
        if not mounted and os.geteuid() == 0:
            pytest.skip("root ignores file modes and may not mount a read-only file system here")
        if not mounted:
            (tmp_path / "ro").chmod(0o555)
        result = _train_cli(config_file, tmp_path / "ro")
        error = _error_line(result)
        cause = "Read-only file system" if mounted else "Permission denied"
        assert error.startswith(f"error: workdir {tmp_path / 'ro'} is not writable ({cause}: ")
        assert "unigram entropy" not in result.stdout  # training never started


# One run per workdir.


def test_a_second_trainer_on_a_live_workdir_is_refused(stopped_run):
    lock = WorkdirLock.acquire(stopped_run, print)
    try:
        with pytest.raises(WorkdirError) as error:
            Trainer(_config(), stopped_run)
    finally:
        lock.release()
    message = str(error.value)
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()} (since " in message
    assert "\n" not in message and "use another --workdir" in message
    Trainer(_config(), stopped_run).checkpointer.close()  # released: the workdir is free again


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    """A trainer killed with SIGKILL leaves the lock file naming it; the next one takes the lock over and warns."""
    code = (
        "import os, pathlib, sys\nfrom hybridlm.workdir_lock import WorkdirLock\n"
        "WorkdirLock.acquire(pathlib.Path(sys.argv[1]), print)\nprint(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dead_pid = int(killed.stdout.split()[-1])
    warnings: list[str] = []
    lock = WorkdirLock.acquire(tmp_path, warnings.append)
    assert len(warnings) == 1 and f"from pid {dead_pid} on host {socket.gethostname()}" in warnings[0]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    WorkdirLock.acquire(tmp_path, warnings.append).release()
    assert len(warnings) == 1  # a released lock is no one's


def test_a_resume_that_changes_the_optimizer_needs_the_flag(stopped_run, capsys):
    """A changed learning rate or step count is refused with one line naming each change and the flag; other train
    settings may change. With the flag the run resumes, config.json holds the new config and config_history.jsonl
    the old one, with the time it was replaced."""
    original = (stopped_run / "config.json").read_text()
    changed = _config()
    changed.optim.lr, changed.train.num_steps = 1e-3, 12
    with pytest.raises(ConfigError) as error:
        Trainer(changed, stopped_run)
    message = str(error.value)
    assert "config.optim.lr (0.003 there, 0.001 now), config.train.num_steps (9 there, 12 now)" in message
    assert "--config.train.allow_resume_changes=True" in message and "\n" not in message
    assert (stopped_run / "config.json").read_text() == original
    assert not (stopped_run / "config_history.jsonl").exists()

    bookkeeping = _config()
    bookkeeping.train.log_every = 3
    Trainer(bookkeeping, stopped_run).checkpointer.close()
    changed.train.allow_resume_changes = True
    Trainer(changed, stopped_run).checkpointer.close()
    out = capsys.readouterr().out
    assert "resuming with changes allowed by config.train.allow_resume_changes: config.optim.lr" in out
    assert json.loads((stopped_run / "config.json").read_text())["optim"]["lr"] == 1e-3
    history = [json.loads(line) for line in (stopped_run / "config_history.jsonl").read_text().splitlines()]
    replaced = [json.loads(original), json.loads(bookkeeping.to_json_best_effort())]
    assert [entry["config"] for entry in history] == replaced
    assert all(entry["replaced_at"].endswith("+00:00") for entry in history)


def test_a_resume_may_move_the_stop_step_of_a_schedule_whose_end_is_set(stopped_run):
    """With config.optim.schedule_steps set there and now, the step count only says where the run stops on the same
    schedule: stopping sooner or going on needs no flag. Where the step count places the schedule's end (set in
    neither, or only in one), it is still a change."""
    recorded = checkpoint.read_run_config(stopped_run)
    recorded.optim.schedule_steps = 2 * STEPS
    (stopped_run / "config.json").write_text(recorded.to_json_best_effort())
    for num_steps in (STEPS + 3, STEPS - 2):
        longer = _config()
        longer.optim.schedule_steps, longer.train.num_steps = 2 * STEPS, num_steps
        assert checkpoint.record_config(stopped_run, longer) == []
    with pytest.raises(ConfigError) as error:
        checkpoint.record_config(stopped_run, _config())  # schedule_steps None: num_steps places the end
    assert "config.optim.schedule_steps (18 there, None now), config.train.num_steps (7 there, 9 now)" in str(
        error.value
    )


def test_a_resume_reads_an_older_config_json_and_may_change_how_steps_run(tmp_path):
    """A config.json written before a model field existed (scan_layers) or with a derived value left null (head_dim)
    holds the same model; remat and the attention implementation may change; a wider model is refused."""
    checkpoint.record_config(tmp_path, _config())
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["model"]["scan_layers"]
    recorded["model"]["head_dim"] = None
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    faster = _config()
    faster.model.update(remat="dots", attention_impl="xla", scan_layers=False)
    checkpoint.record_config(tmp_path, faster)
    wider = _config()
    wider.model.mlp_hidden += 64
    with pytest.raises(ConfigError, match=r"different model \(config.model.mlp_hidden: \d+ there, \d+ now\)"):
        checkpoint.record_config(tmp_path, wider)


# metrics.jsonl.


def test_metrics_are_strict_json_and_a_resume_drops_the_records_it_replays(tmp_path):
    """Non-finite values become strings; on a resume from step 2, an earlier run's records of later steps (and a
    line cut short when it was killed) go, and older lines are rewritten as strict JSON."""
    path = checkpoint.metrics_file(tmp_path)
    path.write_text(
        '{"step": 1, "loss": NaN}\n{"step": 2, "loss": 2.0}\n{"step": 2, "eval_loss": 2.5}\n'
        '{"step": 3, "loss": 1.0}\n{"step": 4, "lo'
    )
    writer = MetricsWriter(tmp_path, resumed_at=2)
    writer.write(3, {"loss": float("inf"), "grad_norm": float("-inf"), "lr": float("nan"), "ce": 1.5})
    writer.close()
    assert [_strict_json(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": "nan"},
        {"step": 2, "loss": 2.0},
        {"step": 2, "eval_loss": 2.5},
        {"step": 3, "loss": "inf", "grad_norm": "-inf", "lr": "nan", "ce": 1.5},
    ]
    drop_records_after(path, 0)
    assert path.read_text() == ""


def test_a_checkpoint_of_another_train_state_layout_is_refused_in_one_line(tmp_path):
    """A state saved without a leaf this version's train state has (a workdir from before it) is refused with one
    CheckpointError naming the step and the fix, not a traceback from orbax."""
    import jax.numpy as jnp

    saved = {"step": jnp.asarray(3, jnp.int32), "params": {"w": jnp.arange(4.0)}}
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=2)
    checkpointer.save(3, saved, {"iterator": {"next_index": 3}, "fingerprint": {}})
    checkpointer.close()
    wanted = {**saved, "skip": {"window": jnp.zeros(2)}}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), wanted)
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=2)
    layout = r"^the checkpoint at step 3 in .* holds a train state of another layout"
    with pytest.raises(checkpoint.CheckpointError, match=layout):
        checkpointer.restore(3, abstract)
    checkpointer.close()
