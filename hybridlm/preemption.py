"""Stopping a run cleanly when it is told to, and checkpoints on a clock: what a run on preemptible machines needs.

`install()`, which the command line calls first, turns SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C)
into a request to stop. The trainer asks `requested(step)` after every step; once it says yes, the trainer saves a
checkpoint at that step (after any save still in flight) and raises `Stopped`, which the command line prints as one
line before exiting with the code a shell gives the signal (143 for SIGTERM, 130 for SIGINT). A signal while the
run starts up (importing, loading data) stops it before it trains, with nothing new to save; one during the
checkpoint restore or the first step's compile stops it after the first step. A second signal is ignored, so it
cannot cut the last save short.

In a run of several processes every process must stop after the same step, since they save checkpoints together.
There JAX's preemption service decides (`multihost_utils.reached_preemption_sync_point`, which `jax.distributed`
starts and orbax's CheckpointManager also consults): its own handler takes over SIGTERM when the process joins the
cluster, and once any process has one, the processes agree on the first step that none of them has finished yet. A
signal this process took itself (SIGINT, or SIGTERM before it joined) is passed on to it as SIGTERM. The agreement
counts the steps every process reports, from the step the run resumes at; a notice that comes while the processes
are still loading their data, before any has reported that step, is lost, and the run trains on until the scheduler
kills it (losing at most the steps since its last checkpoint). With the service off (jax_enable_preemption_service),
signals end the processes at once, as they would without `install()`.

`CheckpointTimer` says when `config.train.checkpoint_minutes` have passed since the last checkpoint, with process
0's clock deciding for every process.

The module imports jax only inside the functions that need it, so that the handlers can be in place before jax loads.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from types import FrameType

import numpy as np

_received: signal.Signals | None = None  # the first stop signal this process took, if any
_passed_on = False  # whether that signal has gone on to JAX's preemption notifier (a run of several processes)


class Stopped(Exception):
    """The run stopped after `step` because of a signal; its message is the line to print, `exit_code` the code a
    shell reports for the signal (128 + its number)."""

    def __init__(self, step: int, directory: pathlib.Path, trained: bool):
        self.signal = _received or signal.SIGTERM  # None: JAX's handler took a SIGTERM (a run of several processes)
        self.step = step
        self.exit_code = 128 + self.signal
        cause = _received.name if _received else "SIGTERM to one of the processes"
        if trained:
            what = f"at step {step}; checkpoint saved in {directory}"
        else:
            what = f"before training from step {step}; nothing new to save"
        super().__init__(f"stopped by {cause} {what}; rerun the same command to resume")


def install() -> None:
    """Makes SIGTERM and SIGINT ask the run to stop after the step in flight (see the module's doc). Call it from
    the main thread, before joining a jax.distributed cluster."""
    signal.signal(signal.SIGTERM, _record)
    signal.signal(signal.SIGINT, _record)


def requested(step: int) -> bool:
    """Whether the run should stop after `step` (the number of steps done): the same answer on every process.

    Call it on every process after every step, starting with the step the run resumes at (JAX's sync point counts
    from the steps reported to it).
    """
    import jax
    from jax.experimental import multihost_utils

    if not jax.distributed.is_initialized():
        return _received is not None
    try:
        reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # JAX's preemption service is off (jax_enable_preemption_service): no agreed step
        _restore_default_handlers()
        return False
    _pass_on()
    return reached


def _record(signum: int, frame: FrameType | None) -> None:
    """Signal handler: remembers the first SIGTERM or SIGINT, and says that a later one is ignored."""
    global _received
    received = signal.Signals(signum)
    if _received is not None:
        _note(f"{received.name} ignored: already stopping after {_received.name}")
        return
    _received = received
    _note(f"{received.name}: stopping after the step in flight and saving a checkpoint (kill -9 stops at once)")


def _pass_on() -> None:
    """Sends this process SIGTERM, once, if it took a signal itself: JAX's preemption notifier, which handles SIGTERM
    since the process joined the cluster, then tells the other processes."""
    global _passed_on
    if _received is not None and not _passed_on:
        _passed_on = True
        os.kill(os.getpid(), signal.SIGTERM)


def _restore_default_handlers() -> None:
    """Gives SIGTERM and SIGINT their usual effect again, and acts on a signal already taken as it would have."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _received is not None:
        signal.raise_signal(_received)


def _note(message: str) -> None:
    """Writes one line to stderr straight to the file descriptor (safe inside a signal handler)."""
    os.write(2, f"\n{message}\n".encode())


class CheckpointTimer:
    """Says when `minutes` have passed since the last checkpoint (or since training started); never when None.

    In a run of several processes process 0's clock decides and the others get its answer, so all of them save at
    the same step; `due` is then a collective, which every process must call at the same steps.
    """

    def __init__(self, minutes: float | None):
        self._seconds = None if minutes is None else 60.0 * minutes
        self.restart()

    def restart(self) -> None:
        """Starts the wait for the next checkpoint over (at a checkpoint)."""
        self._since = time.monotonic()

    def due(self) -> bool:
        """Whether the time for a checkpoint has come."""
        if self._seconds is None:
            return False
        from jax.experimental import multihost_utils

        late = time.monotonic() - self._since >= self._seconds
        return bool(multihost_utils.broadcast_one_to_all(np.int32(late)))
