"""A training workdir's layout, and reading and writing what is in it:

    config.json           the run config (`record_config`, `read_run_config`)
    config_history.jsonl  every earlier config.json of the run, one `{"replaced_at": UTC time, "config": ...}` a line
    .lock                 who is training in the workdir (`hybridlm.workdir_lock`)
    checkpoints/<step>/   orbax checkpoints of {"state": the train state, "data": the data iterator's state}, each
                          with a checksums.json (`Checkpointer` saves, verifies and resumes them; `restore_params`
                          reads one step's params)
    metrics.jsonl         one JSON line of metrics per logged step (`metrics_file`)
    tensorboard/          the same scalars as TensorBoard event files (`tensorboard_dir`)

Checksums. Once orbax has committed a step (every process's files written and the step directory renamed into
place), process 0 lists every file under checkpoints/<step>/ with its size and writes checksums.json there; then,
still in the background, it reads each file once more and adds its CRC-32:

    {"version": 1, "step": 6, "files": {"state/_METADATA": {"size": 46481, "crc32": "0c5e2a1f"}, ...}}

Paths are relative to the step directory. CRC-32 catches truncated, lost and overwritten files; it is not a
defence against deliberate tampering. zlib's runs at about 1 GB/s a thread and releases the GIL; the files are read
on 8 threads, off the training path, and the next save waits for them. A checkpoint whose CRC pass was cut short
(the run was killed in the seconds after a save) keeps the sizes alone, and is checked by them.

Restoring checks the newest checkpoint first and falls back to older ones: one that is corrupt, partial (no
checksums.json: its save never finished) or empty is reported in one line and moved aside to
checkpoints/<step>.corrupt-<UTC time>, out of orbax's sight, for inspection.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import re
import tempfile
import zlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from ml_collections import config_dict

from hybridlm.model.config import ConfigError, ModelConfig
from hybridlm.workdir_lock import WorkdirLock

_CONFIG_FILE = "config.json"
_CONFIG_HISTORY_FILE = "config_history.jsonl"
_CHECKPOINTS_DIR = "checkpoints"
_METRICS_FILE = "metrics.jsonl"
_TENSORBOARD_DIR = "tensorboard"
CHECKSUMS_FILE = "checksums.json"
_CHECKSUMS_VERSION = 1
_DATA_STATE_FILE = "data/metadata"  # where orbax's JsonSave puts the "data" item of a checkpoint
_CRC_CHUNK_BYTES = 16 << 20
_CRC_THREADS = 8
_NO_CHECKPOINT, _NONE_INTACT = -1, -2  # what process 0 tells the others instead of a step
# Resuming with a different value of one of these changes the optimizer or its schedule mid-run.
_RESUME_SECTIONS = {"optim": None, "train": ("num_steps",)}  # section -> the keys compared (None: all of them)


class CheckpointError(ValueError):
    """A checkpoint could not be saved, or there is none intact to resume from; the message is one line naming the
    directory and the fix."""


def checkpoints_dir(workdir: pathlib.Path) -> pathlib.Path:
    """Where the orbax checkpoints of the run in `workdir` live, one subdirectory per saved step."""
    return workdir / _CHECKPOINTS_DIR


def metrics_file(workdir: pathlib.Path) -> pathlib.Path:
    """The JSONL file of the run's logged metrics: one `{"step": s, name: value, ...}` object a line."""
    return workdir / _METRICS_FILE


def tensorboard_dir(workdir: pathlib.Path) -> pathlib.Path:
    """The directory of the run's TensorBoard event files."""
    return workdir / _TENSORBOARD_DIR


def is_workdir(path: pathlib.Path) -> bool:
    """Whether `path` is a training workdir: it has checkpoints/ and a config.json with a `model` section."""
    config_path = path / _CONFIG_FILE
    if not checkpoints_dir(path).is_dir() or not config_path.is_file():
        return False
    try:
        return "model" in json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return False


# Checksums.


def _file_sizes(step_dir: pathlib.Path) -> dict[str, int]:
    """{path relative to `step_dir`: size in bytes} of every file under it but checksums.json (and its staged copy,
    which a run killed while writing it leaves)."""
    own = {CHECKSUMS_FILE, f"{CHECKSUMS_FILE}.tmp"}
    return {
        path.relative_to(step_dir).as_posix(): path.stat().st_size
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and path.relative_to(step_dir).as_posix() not in own
    }


def _crc32(path: pathlib.Path) -> str:
    """The CRC-32 of the file's bytes, as 8 hex digits."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _crc32s(step_dir: pathlib.Path, paths: list[str]) -> dict[str, str]:
    """{path: CRC-32} of the files at `paths` under `step_dir`, read on a few threads at once."""
    with concurrent.futures.ThreadPoolExecutor(_CRC_THREADS) as pool:
        return dict(zip(paths, pool.map(lambda p: _crc32(step_dir / p), paths)))


def _write_json(path: pathlib.Path, value: Any) -> None:
    """Writes `value` as JSON to `path`, replacing it in one step so that no reader sees half a file."""
    staged = path.with_name(f"{path.name}.tmp")
    staged.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    staged.replace(path)


def write_checksums(step_dir: pathlib.Path, step: int) -> None:
    """Writes checksums.json into a committed checkpoint: the file sizes first, then the sizes with CRC-32s."""
    sizes = _file_sizes(step_dir)
    files = {path: {"size": size} for path, size in sizes.items()}
    _write_json(step_dir / CHECKSUMS_FILE, {"version": _CHECKSUMS_VERSION, "step": step, "files": files})
    for path, crc in _crc32s(step_dir, list(sizes)).items():
        files[path]["crc32"] = crc
    _write_json(step_dir / CHECKSUMS_FILE, {"version": _CHECKSUMS_VERSION, "step": step, "files": files})


def _read_checksums(step_dir: pathlib.Path, step: int) -> dict[str, dict[str, Any]] | str:
    """The `files` of the step's checksums.json, or why it cannot be used."""
    try:
        recorded = json.loads((step_dir / CHECKSUMS_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {CHECKSUMS_FILE} (its save did not finish)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {CHECKSUMS_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(recorded, dict) or recorded.get("step") != step or not isinstance(recorded.get("files"), dict):
        return f"its {CHECKSUMS_FILE} does not describe step {step}"
    files = recorded["files"]
    if not all(isinstance(entry, dict) and isinstance(entry.get("size"), int) for entry in files.values()):
        return f"its {CHECKSUMS_FILE} lacks the size of a file"
    return files


def _files_problem(step_dir: pathlib.Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    """How the files under `step_dir` differ from those its checksums.json records, or None."""
    found = _file_sizes(step_dir)
    missing, extra = sorted(set(recorded) - set(found)), sorted(set(found) - set(recorded))
    if missing:
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
    if extra:
        return f"{extra[0]} is not in its {CHECKSUMS_FILE}"
    for path, entry in recorded.items():
        if found[path] != entry["size"]:
            return f"{path} has {found[path]} bytes, {entry['size']} when saved"
    with_crc = [path for path, entry in recorded.items() if "crc32" in entry]
    for path, crc in _crc32s(step_dir, with_crc).items():
        if crc != recorded[path]["crc32"]:
            return f"{path} does not match its CRC-32 (its bytes changed since the save)"
    return None


def _data_problem(step_dir: pathlib.Path, step: int) -> str | None:
    """Whether the data iterator's position saved with the checkpoint is the step's ({"next_index": step} for
    grain's iterators), or why not."""
    try:
        data_state = json.loads((step_dir / _DATA_STATE_FILE).read_text())
        position = data_state["iterator"].get("next_index", step)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        return f"its data state {_DATA_STATE_FILE} is unreadable ({type(e).__name__})"
    if position != step:
        return f"its data iterator is at batch {position}, not {step}"
    return None


def checkpoint_problem(step_dir: pathlib.Path, step: int) -> str | None:
    """Why checkpoints/<step> cannot be resumed from, as a clause ("it is empty", "state/x is missing", ...), or
    None when it is intact: every file its checksums.json records is there with its size and CRC-32, no other file
    is, and its data iterator stands at the step."""
    if not step_dir.is_dir():
        return "it is not a directory"
    if not any(step_dir.iterdir()):
        return "it is empty"
    recorded = _read_checksums(step_dir, step)
    if isinstance(recorded, str):
        return recorded
    return _files_problem(step_dir, recorded) or _data_problem(step_dir, step)


def saved_steps(directory: pathlib.Path) -> list[int]:
    """The steps named by the entries of a checkpoints directory (anything called `<int>`), newest first."""
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def newest_intact(directory: pathlib.Path, steps: list[int]) -> tuple[int | None, list[tuple[int, str]]]:
    """The first of `steps` (newest first) whose checkpoint in `directory` is intact, or None, and the
    (step, problem) of each one checked before it."""
    problems = []
    for step in steps:
        problem = checkpoint_problem(directory / str(step), step)
        if problem is None:
            return step, problems
        problems.append((step, problem))
    return None, problems


def _listing(problems: list[tuple[int, str]]) -> str:
    """"step 6: it is empty; step 3: ..." for one line."""
    return "; ".join(f"step {step}: {problem}" for step, problem in problems)


# Saving and resuming.


def _save_failure(step: int, directory: pathlib.Path, error: BaseException) -> CheckpointError:
    """One line for a background save of `step` into `directory` that failed with `error`."""
    code = re.search(r"os_error_code='?(\d+)", str(error))  # tensorstore's report of the OS error
    if code:
        cause = os.strerror(int(code.group(1)))
    elif isinstance(error, OSError) and error.strerror:
        cause = error.strerror
    else:
        cause = " ".join(str(error).split())[:200]
    return CheckpointError(
        f"saving the checkpoint at step {step} in {directory} failed ({cause}); free space or fix the permissions "
        f"there, then rerun the same command to resume from the newest intact checkpoint"
    )


def _check_writable(directory: pathlib.Path) -> None:
    """Creates `directory` if needed and writes and deletes a file in it; raises CheckpointError if it cannot."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        raise CheckpointError(
            f"{directory} is not writable ({e.strerror}); give a --workdir on a writable file system"
        ) from None


class Checkpointer:
    """Saves the train state and the data iterator's state every N steps (keeping the newest few, and any step of
    `keep_steps`, e.g. the branch points of a ladder's decays) in `directory`
    (`checkpoints_dir(workdir)`), checksums each save, and restores the newest intact one. It holds the run's
    workdir lock, if given one, until `close`.

    Orbax writes a save in the background. After it commits, a thread here waits for it and (on process 0) writes
    its checksums.json. A failed save is raised as a CheckpointError by the next `raise_if_failed` (the trainer
    calls it every step; it does not block), `save` or `close`.
    """

    def __init__(
        self, workdir: pathlib.Path, keep: int, lock: WorkdirLock | None = None, keep_steps: tuple[int, ...] = ()
    ):
        self._lock = lock
        self.directory = checkpoints_dir(workdir)
        try:
            _check_writable(self.directory)
        except CheckpointError:
            self._release_lock()
            raise
        self._keep, self._keep_steps = keep, tuple(keep_steps)
        self._orbax: ocp.CheckpointManager | None = None
        self._finisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-finish")
        self._pending: concurrent.futures.Future | None = None  # the last save's wait and checksums
        self._pending_step = 0
        self._failure: CheckpointError | None = None

    def latest_step(self) -> int | None:
        """The newest step with a checksums.json: saved and committed (`newest_intact_step` also checks its files)."""
        recorded = (s for s in saved_steps(self.directory) if (self.directory / str(s) / CHECKSUMS_FILE).is_file())
        return next(recorded, None)

    def _manager(self) -> ocp.CheckpointManager:
        """Orbax's manager of the directory, made on first use: after `newest_intact_step` has moved damaged steps
        aside, so that orbax does not read them."""
        if self._orbax is None:
            keep = ocp.checkpoint_managers.preservation_policy  # the newest `keep`, and every step of keep_steps
            policy = keep.AnyPreservationPolicy([keep.LatestN(self._keep), keep.CustomSteps(self._keep_steps)])
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
            self._orbax = ocp.CheckpointManager(self.directory.absolute(), options=options)
        return self._orbax

    def _release_lock(self) -> None:
        """Releases the workdir lock, if this checkpointer holds one."""
        if self._lock is not None:
            self._lock.release()

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` (a pytree of arrays) and `data_state` (JSON) at `step`, after the
        previous save has finished; raises CheckpointError if that one failed."""
        self._wait_for_pending()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        try:
            self._manager().save(step, args=args, force=True)
        except OSError as e:  # orbax makes the step's directory before it returns: permissions, a full disk
            self._failure = _save_failure(step, self.directory, e)
            raise self._failure from None
        self._pending, self._pending_step = self._finisher.submit(self._finish_save, step), step

    def _finish_save(self, step: int) -> None:
        """In the background: waits for orbax to commit `step`, then (process 0) writes its checksums."""
        self._manager().wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(self.directory / str(step), step)

    def raise_if_failed(self) -> None:
        """Raises CheckpointError if the last save has failed; returns at once otherwise, finished or not."""
        if self._failure is not None or (self._pending is not None and self._pending.done()):
            self._wait_for_pending()

    def _wait_for_pending(self) -> None:
        """Waits for the last save and its checksums; raises CheckpointError if they failed."""
        if self._pending is not None and self._failure is None:
            try:
                self._pending.result()
            except Exception as e:  # anything the save raised is its failure, reported in one line
                self._failure = _save_failure(self._pending_step, self.directory, e)
            self._pending = None
        if self._failure is not None:
            raise self._failure

    def newest_intact_step(self, say: Callable[[str], None]) -> int | None:
        """The newest step whose checkpoint is intact (`checkpoint_problem`), or None when there is no checkpoint
        at all; raises CheckpointError when none of them is intact.

        Process 0 checks them, newest first: each one that is not intact is reported through `say` in one line and
        moved aside (checkpoints/<step>.corrupt-<time>); the others learn its answer. Every process then reloads
        orbax's list of steps, if it has read it already.
        """
        choice, problems = self._choose(say) if jax.process_index() == 0 else (_NO_CHECKPOINT, [])
        choice = int(multihost_utils.broadcast_one_to_all(np.int32(choice)))
        if choice == _NONE_INTACT:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} ({_listing(problems) or 'see process 0'}); move the "
                "directory aside to start afresh, or use a new --workdir"
            )
        if self._orbax is not None:
            self._orbax.reload()
        return None if choice == _NO_CHECKPOINT else choice

    def _choose(self, say: Callable[[str], None]) -> tuple[int, list[tuple[int, str]]]:
        """Process 0's part of `newest_intact_step`: the step (or _NO_CHECKPOINT, _NONE_INTACT) and the problems
        found."""
        steps = saved_steps(self.directory)
        step, problems = newest_intact(self.directory, steps)
        if step is None:
            return (_NONE_INTACT if steps else _NO_CHECKPOINT), problems
        moved_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for bad, problem in problems:
            aside = self.directory / f"{bad}.corrupt-{moved_at}"
            (self.directory / str(bad)).rename(aside)
            say(f"the checkpoint at step {bad} is not intact ({problem}); moved it to {aside} and fell back")
        return step, problems

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The train state saved at `step`, laid out (shapes, dtypes, shardings) as `abstract_state`, and the data
        state saved with it."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        try:
            restored = self._manager().restore(step, args=args)
        except ValueError as e:  # its files are intact (checked before): the train state's layout differs
            said = " ".join(str(e).split())[:200]
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} holds a train state of another layout ({said}); "
                "resume it with the hybridlm version that saved it, or start a new --workdir"
            ) from None
        return restored.state, restored.data

    def close(self) -> None:
        """Waits for the last save and its checksums, closes orbax's manager and releases the workdir lock; raises
        CheckpointError if the save failed (orbax's manager is left as it is then: the run is over)."""
        try:
            self._wait_for_pending()
            if self._orbax is not None:
                self._orbax.close()
        finally:
            self._finisher.shutdown()
            self._release_lock()


# The run config.


def _changed_keys(previous: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] | None) -> list[str]:
    """The keys (all of `keys`, or every key both sections have when None) whose values differ."""
    names = keys if keys is not None else sorted(set(previous) & set(current))
    return [k for k in names if k in previous and k in current and previous[k] != current[k]]


def _resume_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each optimizer or schedule setting that differs, as "config.<section>.<key> (<there> there, <now> now)".
    config.train.num_steps counts only where it places the schedule's end (config.optim.schedule_steps None there or
    now): with the end set in both, a run may stop short of it or go on towards it on the same schedule."""
    schedule_set = all(config.get("optim", {}).get("schedule_steps") is not None for config in (previous, current))
    return [
        f"config.{section}.{key} ({previous[section][key]!r} there, {current[section][key]!r} now)"
        for section, keys in _RESUME_SECTIONS.items()
        for key in _changed_keys(previous.get(section, {}), current.get(section, {}), keys)
        if not (schedule_set and (section, key) == ("train", "num_steps"))
    ]


# Fields of config.model that change how a step runs, not the model it trains: a resumed run may change them.
_EXECUTION_FIELDS = (
    "remat",
    "scan_layers",
    "attention_impl",
    "loss_chunk_tokens",
    "gdn.impl",
    "gdn.conv_impl",
    "gdn.norm_impl",
)


def _model_fields(workdir: pathlib.Path, model: dict[str, Any]) -> dict[str, Any]:
    """`model` (a config.model dict) as flat "a.b" keys, with defaults filled in and derived values resolved, as
    ModelConfig reads it; the execution fields left out."""
    try:
        resolved = dataclasses.asdict(ModelConfig.from_config(model))
    except (TypeError, ConfigError) as e:
        raise ConfigError(
            f"workdir {workdir} holds a run whose model config cannot be read here ({e}); use a new --workdir"
        ) from None
    flat = {f"gdn.{k}": v for k, v in resolved.pop("gdn").items()} | resolved
    return {k: v for k, v in flat.items() if k not in _EXECUTION_FIELDS}


def _check_same_model(workdir: pathlib.Path, previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Raises ConfigError if the model trained in `workdir` differs from the current one (fields a config.json
    written earlier lacks count at their defaults; execution fields such as remat may change)."""
    before, now = _model_fields(workdir, previous["model"]), _model_fields(workdir, current["model"])
    changed = sorted(k for k in before if before[k] != now[k])
    if changed:
        raise ConfigError(
            f"workdir {workdir} holds a run of a different model (config.model.{changed[0]}: "
            f"{before[changed[0]]!r} there, {now[changed[0]]!r} now); use a new --workdir or the same model config"
        )


def _append_history(workdir: pathlib.Path, previous: dict[str, Any]) -> None:
    """Appends the config being replaced to config_history.jsonl, with the time it was replaced."""
    replaced_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(workdir / _CONFIG_HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"replaced_at": replaced_at, "config": previous}, sort_keys=True) + "\n")


def record_config(workdir: pathlib.Path, config: config_dict.ConfigDict) -> list[str]:
    """Writes the run config `config` into `workdir` and returns the optimizer and schedule changes it makes to a
    run being resumed there.

    If a config is there already: a different model is refused (ConfigError); so is, when the workdir has
    checkpoints, a change to config.optim or to the config.train.num_steps that places the schedule's end, unless
    `config.train.allow_resume_changes` is set. The config replaced goes to config_history.jsonl when it differs from
    the new one.

    In a run of several processes every process checks (each raises the same ConfigError) and only process 0 writes,
    replacing the file in one step so that no process reads it half-written.
    """
    path = workdir / _CONFIG_FILE
    current = json.loads(config.to_json_best_effort())
    previous = json.loads(path.read_text()) if path.exists() else None
    changes: list[str] = []
    if previous is not None:
        _check_same_model(workdir, previous, current)
        changes = _resume_changes(previous, current) if saved_steps(checkpoints_dir(workdir)) else []
        if changes and not config.train.get("allow_resume_changes"):
            raise ConfigError(
                f"resuming the run in {workdir} would change its optimizer or schedule: {', '.join(changes)}; "
                "pass --config.train.allow_resume_changes=True if that is wanted, or use a new --workdir"
            )
    if jax.process_index() == 0:
        if previous is not None and previous != current:
            _append_history(workdir, previous)
        _write_json(path, current)
    return changes


def read_run_config(workdir: pathlib.Path) -> config_dict.ConfigDict:
    """The run config recorded in `workdir`; raises ValueError if there is none."""
    path = workdir / _CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: {workdir} is not a training workdir")
    return config_dict.ConfigDict(json.loads(path.read_text()))


def _intact_step(directory: pathlib.Path, step: int | None) -> int:
    """`step`, or the newest intact step when None; raises ValueError unless its checkpoint is there and intact."""
    steps = saved_steps(directory)
    if not steps:
        raise ValueError(f"{directory} holds no checkpoint; train the run past its first checkpoint")
    if step is None:
        newest, problems = newest_intact(directory, steps)
        if newest is None:
            raise ValueError(f"{directory} holds no intact checkpoint ({_listing(problems)})")
        return newest
    if step not in steps:
        raise ValueError(f"{directory} has no checkpoint at step {step}; it has steps {sorted(steps)}")
    problem = checkpoint_problem(directory / str(step), step)
    if problem:
        raise ValueError(f"the checkpoint at step {step} in {directory} is not intact ({problem}); pick another step")
    return step


def _read(workdir: pathlib.Path, step: int | None, args: ocp.args.Composite) -> tuple[Any, int]:
    """`args` restored from the checkpoint at `step` (default: the newest intact one) in `workdir`, read without
    writing there, and that step. Raises ValueError if `workdir` has no checkpoints, none at `step`, or that one is
    not intact."""
    directory = checkpoints_dir(workdir).absolute()
    if not directory.is_dir():
        raise ValueError(f"{workdir} has no checkpoints directory; train that run first")
    step = _intact_step(directory, step)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        return manager.restore(step, args=args), step
    finally:
        manager.close()


def restore_state(
    workdir: pathlib.Path, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict[str, Any], int]:
    """The train state (laid out as `abstract_state`) and data state saved at `step` (default: the newest intact
    checkpoint) in another run's `workdir`, and that step; raises ValueError as `_read`."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    restored, step = _read(workdir, step, args)
    return restored.state, restored.data, step


def restore_params(
    workdir: pathlib.Path, abstract_params: dict[str, Any], step: int | None = None
) -> tuple[dict[str, Any], int]:
    """The params saved at `step` (default: the newest intact checkpoint) in `workdir`, and that step.

    Reads only the params subtree of the train state (no optimizer state) into numpy arrays on the host, laid out as
    `abstract_params` (a nested dict of jax.ShapeDtypeStruct: `hybridlm.model.abstract_params(config)`). Raises
    ValueError as `_read`.
    """
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    state = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    restored, step = _read(workdir, step, ocp.args.Composite(state=state))
    return restored.state["params"], step
