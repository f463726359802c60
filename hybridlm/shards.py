"""Work split into shards: `--shard=i/n` names one of n parts, and `run_local_shards` runs all n parts of a command
at once as processes of this host that share its accelerators (the sweep's and the expressivity grid's `--jobs`)."""

from __future__ import annotations

import os
import signal
import subprocess


def parse_shard(shard: str) -> tuple[int, int]:
    """(i, n) of `--shard=i/n`; ValueError unless 0 <= i < n."""
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"--shard={shard} is not i/n with 0 <= i < n, e.g. --shard=0/2")
    return int(index), int(count)


def run_local_shards(command: list[str], count: int) -> list[str]:
    """Runs `command` + --shard=i/count for i < count as processes at once, with device memory allocated as needed
    rather than preallocated so that they share the host's accelerators, passing SIGINT and SIGTERM on to them;
    returns "i/count (exit code)" for each that failed."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    children = [subprocess.Popen([*command, f"--shard={i}/{count}"], env=env) for i in range(count)]
    forward = lambda signum, frame: [child.send_signal(signum) for child in children]  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return [f"{i}/{count} (exit {code})" for i, code in enumerate(codes) if code]
