"""One run per workdir: process 0 of a run holds an exclusive lock on workdir/.lock while it trains.

The lock is `fcntl.flock` on the file, which the kernel drops when the process exits however it exits (on NFS, the
server drops it once the client's lease expires), and the file names its holder: `{"host": ..., "pid": ...,
"since": UTC time}`. A second trainer on the workdir is refused in one line naming that host and pid. A file naming
a holder but not locked was left by a run that was killed or crashed: the new run takes it over with a warning.
Releasing empties the file.

Opening the lock file is also the first write to the workdir, so a read-only workdir is refused here, before
anything is compiled.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
from typing import Callable, TextIO

LOCK_FILE = ".lock"


class WorkdirError(ValueError):
    """The workdir is in use by another run, or cannot be written; the message is one line naming the fix."""


def _holder() -> str:
    """This process, as the lock file records it."""
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})


def _describe(holder: str) -> str:
    """"pid 123 on host h (since t)" for a lock file's contents, or the contents as they are if not ours."""
    try:
        fields = json.loads(holder)
        return f"pid {fields['pid']} on host {fields['host']} (since {fields['since']})"
    except (json.JSONDecodeError, TypeError, KeyError):
        return repr(holder[:100])


def _open(path: pathlib.Path) -> TextIO:
    """The lock file, opened for reading and writing (created if missing); WorkdirError if the workdir is not
    writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
    except OSError as e:
        raise WorkdirError(
            f"workdir {path.parent} is not writable ({e.strerror}: {e.filename}); give a --workdir on a writable "
            "file system"
        ) from None


class WorkdirLock:
    """The lock on one workdir, held from `acquire` until `release` (or until the process exits)."""

    def __init__(self, file: TextIO):
        self._file = file

    @classmethod
    def acquire(cls, workdir: pathlib.Path, warn: Callable[[str], None]) -> WorkdirLock:
        """Locks `workdir` (creating it if needed) for this process; raises WorkdirError if another process holds
        it or the workdir cannot be written. Taking over a lock left by a dead run is reported through `warn`."""
        path = workdir / LOCK_FILE
        file = _open(path)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = file.read().strip()
            file.close()
            raise WorkdirError(
                f"workdir {workdir} is in use by {_describe(holder) if holder else 'another process'} (lock file "
                f"{path}); wait for that run to finish, stop it, or use another --workdir"
            ) from None
        previous = file.read().strip()
        if previous:
            warn(f"warning: taking over {path} from {_describe(previous)}, which no longer holds it (that run died)")
        file.seek(0)
        file.truncate()
        file.write(_holder() + "\n")
        file.flush()
        return cls(file)

    def release(self) -> None:
        """Empties the lock file and unlocks it; does nothing the second time."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.close()  # closing the descriptor drops the flock
