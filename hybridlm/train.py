"""Command line: `python -m hybridlm.train --config=<experiment or file> --workdir=DIR [--config.<key>=<value> ...]`.

Trains the named experiment (see `python -m experiments`), resuming from the latest checkpoint in DIR. SIGTERM or
SIGINT stops it after the step in flight, with a checkpoint there, and exit code 143 or 130 (hybridlm.preemption).

A run of several processes (hosts) joins a `jax.distributed` cluster first: from `--coordinator_address`,
`--num_processes` and `--process_id`, or, without them, as jax detects it on a Cloud TPU pod slice, in a SLURM step
of several tasks, or under Open MPI's `mpirun`. Every process runs the same command.
"""

from __future__ import annotations

import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from hybridlm import cluster_watch, named_configs, preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "An experiment name from `python -m experiments`, or the path of a config file."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the run's config.json live.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a run of several processes (with --num_processes and --process_id); without the "
    "three, jax detects a TPU pod slice, SLURM step or Open MPI launch, and otherwise the run is one process.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "How many processes the run has (see --coordinator_address)."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to --num_processes - 1.")
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout_s",
    cluster_watch.TIMEOUT_S,
    "A run of several processes: seconds without a heartbeat from another process before this one stops with exit "
    "code 75, rather than wait in a collective for good (hybridlm/cluster_watch.py).",
    lower_bound=1.0,
)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _resolve_experiment(argv: list[str]) -> list[str]:
    """Replaces the experiment name in `--config=NAME[:ARG]` (or `--config NAME[:ARG]`) with its file, which
    config_flags loads; a config file's path is checked first (named_configs.resolve)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value, prefix, index = arg.split("=", 1)[1], "--config=", i
        elif arg == "--config" and i + 1 < len(argv):
            value, prefix, index = argv[i + 1], "", i + 1
        else:
            continue
        argv[index] = f"{prefix}{named_configs.resolve(value)}"
    return argv


def _unknown_key_message(argv: list[str], error: Exception) -> str:
    key = re.findall(r"[A-Za-z_]\w*", str(error))[0]
    suggestion = re.search(r'Did you mean "(\w+)"', str(error))
    hint = f"did you mean {suggestion.group(1)!r}? " if suggestion else ""
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if o.split(".")[-1] == key), ", ".join(overrides))
    return f"{culprit}: the config has no key {key!r}; {hint}(keys and defaults: python -m experiments --show=NAME)"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with experiment names and one-line errors for bad flags or config overrides."""
    try:
        return flags.FLAGS(_resolve_experiment(argv))
    except named_configs.ConfigFileError as e:
        _fail(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of a missing key
        _fail(_unknown_key_message(argv, e))
    except flags.Error as e:
        _fail(f"{e}".splitlines()[0] + " (keys and defaults: python -m experiments --show=NAME)")


def _cluster_flags() -> tuple[str, int, int] | None:
    """(--coordinator_address, --num_processes, --process_id), or None when none is given; fails unless all three
    are given, with a host:port address and a process id in range."""
    address, count, index = _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    given = [value is not None for value in (address, count, index)]
    if not any(given):
        return None
    if not all(given):
        _fail(
            "--coordinator_address, --num_processes and --process_id go together: give all three, or none to let jax "
            "detect a TPU pod slice, SLURM step or Open MPI launch"
        )
    if not re.fullmatch(r".+:\d+", address):
        _fail(
            f"--coordinator_address={address} is not host:port; give process 0's host and a free port, "
            "e.g. 10.0.0.1:1234"
        )
    if not 0 <= index < count:
        _fail(f"--process_id={index} with --num_processes={count}: number the processes 0 to num_processes - 1")
    return address, count, index


def _launched_as_one_of_several() -> bool:
    """Whether a launcher that `jax.distributed.initialize()` detects by itself started this process as one of
    several: Open MPI's mpirun, a SLURM step, a Cloud TPU pod slice (GKE or GCE), checked in jax's order."""
    from jax._src import clusters  # jax's own detection (private API): the environments initialize() recognises

    for env in (clusters.OmpiCluster, clusters.SlurmCluster, clusters.GkeTpuCluster, clusters.GceTpuCluster):
        if env.is_env_present():
            return env.get_process_count() > 1
    return False


def _join_cluster(cluster: tuple[str, int, int] | None) -> None:
    """Joins the jax.distributed cluster of a run of several processes: `cluster` (coordinator address, process
    count, this process's id) when given, else the one jax detects; a single process joins none. Must run before
    anything starts a jax backend."""
    import jax

    if cluster is None and not _launched_as_one_of_several():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices: collectives across processes
    if cluster is None:
        jax.distributed.initialize()
    else:
        address, count, index = cluster
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)


def out_of_memory_message(error: str, argv: list[str]) -> str:
    """One line for XLA running out of device memory (`error`, its RESOURCE_EXHAUSTED message) while compiling or
    running the command `argv`: what XLA said and the memory plan command for the same config."""
    said = " ".join(error.split())[:240]
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "NAME")
    overrides = " ".join(a for a in argv if a.startswith("--config."))
    plan = " ".join(["python -m experiments", f"--show={config}", "--plan", overrides]).strip()
    return (
        f"out of device memory ({said}); see what the run needs per device, and what to change (remat, batch, "
        f"mesh), with: {plan}"
    )


def _check_workdir(workdir: str) -> None:
    """Fails unless `workdir` is a directory or can be made one (its nearest existing ancestor is a directory)."""
    path = pathlib.Path(workdir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        _fail(f"--workdir={workdir}: {existing} is a file, not a directory; give a new directory or a run's workdir")


def _refuse_dropped_overrides(config: config_dict.ConfigDict, argv: list[str]) -> None:
    """With `config.init_from_hf`, raises HFFormatError for a `--config.model.<field>` override in `argv` that the
    checkpoint's architecture would replace (hybridlm.hf.load.check_architecture_overrides)."""
    if config.get("init_from_hf"):
        from hybridlm.hf import load

        keys = [arg.split("=", 1)[0].removeprefix("--config.") for arg in argv if arg.startswith("--config.")]
        load.check_architecture_overrides(config, keys)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Keeps orbax's per-save INFO lines off the terminal.
    if _CONFIG.value is None or _WORKDIR.value is None:
        _fail("both --config (an experiment name from `python -m experiments`) and --workdir are required")
    _check_workdir(_WORKDIR.value)
    _join_cluster(_cluster_flags())
    import jax  # Imported late, like the trainer: flag errors come back before jax starts up.

    watch = cluster_watch.start(_WORKDIR.value, _PEER_TIMEOUT.value)  # stop soon after another process dies

    from hybridlm.checkpoint import CheckpointError
    from hybridlm.model.config import ConfigError
    from hybridlm.skip_step import DivergenceError
    from hybridlm.trainer import Trainer

    try:
        _refuse_dropped_overrides(_CONFIG.value, sys.argv[1:])
        trainer = Trainer(
            _CONFIG.value,
            _WORKDIR.value,
            name=named_configs.experiment_name(config_flags.get_config_filename(flags.FLAGS["config"])),
        )
    except ValueError as e:  # ConfigError and data errors: raised before anything compiles.
        _fail(str(e))
    try:
        trainer.train()
    except ConfigError as e:  # A checkpoint whose data no longer matches: raised before the first step.
        _fail(str(e))
    except DivergenceError as e:  # Too many skipped steps in a row, or a non-finite state: nothing more was saved.
        _fail(str(e))
    except CheckpointError as e:  # No intact checkpoint to resume from, or a save failed (disk full, permissions).
        _fail(str(e))
    except preemption.Stopped as e:  # SIGTERM or SIGINT: the step reached is saved (or none was trained).
        if watch is not None:
            watch.finish()  # every process stops at this step
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        if isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e):
            _fail(out_of_memory_message(str(e), sys.argv[1:]))
        if watch is not None:
            watch.await_verdict()  # a collective with a dead process fails here first; the watch then ends this one
        raise
    if watch is not None:
        watch.finish()


if __name__ == "__main__":
    preemption.install()  # before the config loads jax: SIGTERM and SIGINT stop the run cleanly from the start
    app.run(main, flags_parser=parse_flags)
