"""Ends every process of a multi-process run soon after one of them dies, instead of leaving the others waiting in a
collective that never returns.

jax.distributed's own check, its coordination service's heartbeats, aborts the survivors of a dead process only after
`heartbeat_timeout_seconds` (100 s by default). Here each process runs two daemon threads. One bumps this process's
counter in the cluster's key-value store every `INTERVAL_S` seconds and reads the others'. The other judges: a process
whose counter has not moved for `TIMEOUT_S` seconds (by this process's clock; the command's --peer_timeout_s), or a
store that has not answered for as long, ends this process with one line on stderr that names the process lost and
how to resume, and the exit code `EXIT_CODE`. (When process 0 dies, the store and the coordination service die with
it, and jax aborts the others at once with its own line, "Terminating process because the JAX distributed service
detected fatal errors". On CPU devices gloo, the collectives' transport, can also abort a survivor at once when its
peer dies in the middle of a train step's collectives, with its own line, "terminate called after throwing an instance
of 'gloo::EnforceNotMet'".) A process that ends its run normally, or stops on a signal with its peers, marks itself done
first, so that a peer still saving its last checkpoint is not taken for dead; one that fails leaves no mark, and its
peers stop after `TIMEOUT_S`. A collective whose peer vanished may fail before the watch sees it (gloo: "Connection
closed by peer"); the command then waits for the watch's verdict (`await_verdict`) before it raises the error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_S = 5.0
TIMEOUT_S = 45.0  # a dead peer is seen within 50 s; a live one whose heartbeat thread stalls for less is not
EXIT_CODE = 75  # EX_TEMPFAIL: the run can go on when started again
_DONE = "done"


def _key(process: int) -> str:
    return f"hybridlm/cluster_watch/{process}"


def _store() -> Any:
    """The jax.distributed client, whose key-value store lives in process 0's coordination service (a private jax
    API: jax exposes the store publicly only through its own helpers)."""
    from jax._src import distributed

    return distributed.global_state.client


class ClusterWatch:
    """Watches the other processes of this jax.distributed cluster (see the module docstring)."""

    def __init__(
        self,
        workdir: str,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
        end: Callable[[int], None] = os._exit,
    ):
        import jax

        self.process, self.count = jax.process_index(), jax.process_count()
        self.workdir, self.interval_s, self.timeout_s, self.end = workdir, interval_s, timeout_s, end
        self.store = _store()
        now = time.monotonic()
        self.answered = now  # when the store last answered a whole round
        self.peers: dict[int, tuple[str | None, float]] = {  # process -> (its counter, when it last moved)
            p: (None, now) for p in range(self.count) if p != self.process
        }
        self.finished = threading.Event()
        self.threads = [
            threading.Thread(target=self._beat, name="cluster-watch-beat", daemon=True),
            threading.Thread(target=self._judge, name="cluster-watch-judge", daemon=True),
        ]

    def start(self) -> ClusterWatch:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        """Marks this process done (its peers stop watching it) and stops watching."""
        self.finished.set()
        try:
            self.store.key_value_set(_key(self.process), _DONE, allow_overwrite=True)
        except Exception:  # the store is gone too: nobody is left to read the mark
            pass

    def await_verdict(self) -> None:
        """Waits as long as the watch takes to find a dead process (timeout_s and two rounds), for a caller holding
        an error that a dead process may have caused (a collective whose peer vanished): if one died, the watch ends
        this process with its line meanwhile; if none did, this returns and the caller raises its error."""
        time.sleep(self.timeout_s + 2 * self.interval_s)

    def _read(self, process: int) -> str | None:
        """The counter of `process`, None before its first beat."""
        try:
            return self.store.key_value_try_get(_key(process))
        except Exception as e:
            if "NOT_FOUND" in str(e):
                return None
            raise

    def _beat(self) -> None:
        beats = 0
        while not self.finished.wait(self.interval_s):
            try:
                beats += 1
                self.store.key_value_set(_key(self.process), str(beats), allow_overwrite=True)
                values = {p: self._read(p) for p in self.peers}
            except Exception:  # unreachable for now; the judge decides when that has lasted too long
                continue
            now = time.monotonic()
            for process, value in values.items():
                if value != self.peers[process][0]:
                    self.peers[process] = (value, now)
            self.answered = now

    def _judge(self) -> None:
        while not self.finished.wait(self.interval_s):
            now = time.monotonic()
            if now - self.answered > self.timeout_s:
                self._lost(f"the cluster's key-value store (in process 0) has not answered for {self.timeout_s:g} s")
            for process, (value, moved) in self.peers.items():
                if value != _DONE and now - moved > self.timeout_s:
                    self._lost(f"process {process} of {self.count} has sent no heartbeat for {self.timeout_s:g} s")

    def _lost(self, what: str) -> None:
        if self.finished.is_set():
            return
        self.finished.set()  # one verdict: the watch stops here
        print(
            f"error: {what}: it has stopped, so process {self.process} stops too (exit {EXIT_CODE}). Start the run "
            f"again on every process with the same command: it resumes from the last checkpoint in {self.workdir}.",
            file=sys.stderr,
            flush=True,
        )
        self.end(EXIT_CODE)


def start(workdir: str, timeout_s: float = TIMEOUT_S) -> ClusterWatch | None:
    """A started watch (a peer lost after `timeout_s`, checked every INTERVAL_S or timeout_s / 3 if less) when this
    process is one of several of a jax.distributed cluster, else None."""
    import jax

    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return None
    return ClusterWatch(workdir, min(INTERVAL_S, timeout_s / 3), timeout_s).start()
