"""Soak test of preemption and resumption: kills a training run again and again, then checks it against an unbroken one.

    python tools/soak.py --config tiny_hybrid --minutes 3 [--interval 5,20] [--sigterm 0.5] [--seed 0]
                         [--dir DIR] [--reference WORKDIR] [--config.<key>=<value> ...]

First trains an unbroken run of the config (with the overrides) in DIR/reference, unless --reference names one
(trained with log_every=1). Then runs the same training in DIR/soaked and, after a random wait of --interval seconds
(between the two bounds), sends it SIGTERM (with probability --sigterm) or SIGKILL; it restarts the run after each
death, for --minutes, then lets it train to the end. A SIGTERM must stop the run with exit code 143 and a checkpoint
at the last step it logged (or kill it before its handler is installed, while Python starts). The two runs must
agree bit for bit: the loss of every step, each time it ran (steps re-run after a SIGKILL too), and the final
parameters. Prints a line per run, kills survived by kind, steps lost to each kind and PASS or FAIL; exits 1 on a
mismatch or an exit that no signal explains.

Every run logs each step (`--config.train.log_every=1` is added). A resumed run drops the records of the steps it
replays from metrics.jsonl, so the tool reads the file each time a run dies, and learns from each run's output
where it resumed. The runs share a JAX compilation cache (in DIR, unless JAX_COMPILATION_CACHE_DIR is set), which
the reference run fills, so a restart does not compile again. Soaked run n's output is in DIR/logs/run-<n>.log, the
reference's in DIR/logs/reference.log. DIR defaults to a new temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for uninstalled checkouts

STOPPED = 128 + signal.SIGTERM  # the trainer's exit code after stopping cleanly on SIGTERM
EXPECTED_EXITS = {  # exit codes each way a run can end
    None: (0,),  # it was left to finish
    "SIGKILL": (-signal.SIGKILL, 0),  # 0: it finished just before the signal
    "SIGTERM": (STOPPED, -signal.SIGTERM, 0),  # -15: the signal came while Python started, before the handler
}
STOP_TIMEOUT_S = 120  # how long a run may take to stop after SIGTERM
POLL_S = 0.05
RESUMED = re.compile(r"resumed from the checkpoint at step (\d+)")  # the trainer's line when it resumes
TRAINING = "unigram entropy of the training data"  # the trainer's line just before its first step


@dataclasses.dataclass
class Run:
    """One run of the soaked training: the signal that ended it (None: it ended by itself), its exit code, the step
    it started training from (None: it died before that) and the last step it logged (None: none)."""

    number: int
    kind: str | None
    exit_code: int
    resumed_at: int | None
    last_step: int | None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The tool's flags, and the `--config.<key>=<value>` overrides for the training command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny_hybrid", help="an experiment name or a config file")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to keep killing the run")
    parser.add_argument("--interval", default="5,20", help="seconds between kills: a random time in [A, B], as A,B")
    parser.add_argument("--sigterm", type=float, default=0.5, help="the share of kills that are SIGTERM, not SIGKILL")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times and kinds")
    parser.add_argument("--dir", default=None, help="where the workdirs and logs go (default: a new temporary one)")
    parser.add_argument("--reference", default=None, help="the workdir of an unbroken run of the same config")
    args, overrides = parser.parse_known_args(argv)
    unknown = [arg for arg in overrides if not arg.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (only --config.<key>=<value> overrides pass on)")
    low, high = (float(x) for x in args.interval.split(","))
    if not 0 < low <= high:
        parser.error(f"--interval={args.interval}: give A,B with 0 < A <= B")
    args.interval = (low, high)
    return args, overrides


class Soak:
    """Runs the training command, kills it at random and records how each run ended."""

    def __init__(self, args: argparse.Namespace, overrides: list[str], directory: pathlib.Path):
        self.command = [sys.executable, "-m", "hybridlm.train", f"--config={args.config}"]
        self.overrides = [*overrides, "--config.train.log_every=1"]
        self.interval, self.sigterm, self.minutes = args.interval, args.sigterm, args.minutes
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", str(directory / "jax_cache"))
        self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        self.rng = random.Random(args.seed)
        self.started = time.monotonic()
        self.runs: list[Run] = []
        self.launched = 0
        self.losses: dict[int, dict[bytes, float]] = collections.defaultdict(dict)  # step -> every loss it logged
        self.failures: list[str] = []

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def log(self, run: int) -> pathlib.Path:
        """Where soaked run number `run`'s output goes."""
        return self.logs / f"run-{run}.log"

    def launch(self, workdir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
        """Starts the training command on `workdir`, its output going to `log`."""
        with open(log, "w", encoding="utf-8") as output:
            command = [*self.command, f"--workdir={workdir}", *self.overrides]
            return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT)

    def soak(self, workdir: pathlib.Path) -> None:
        """Kills and restarts the run in `workdir` for --minutes, then lets it train to the end."""
        deadline = time.monotonic() + 60 * self.minutes
        while not self.runs or self.runs[-1].exit_code != 0:
            self.launched += 1
            process = self.launch(workdir, self.log(self.launched))
            kind = self.kill_in_a_while(process, deadline)
            if kind is None and process.poll() is None:
                self.say(f"run {self.launched}: time is up, letting it finish")
            process.wait()
            self.record(kind, process.returncode, workdir)
            if kind is None:
                return

    def kill_in_a_while(self, process: subprocess.Popen, deadline: float) -> str | None:
        """Waits a random interval, then sends SIGTERM or SIGKILL and waits for the run to exit; returns the signal's
        name, or None when the run ended first or `deadline` came."""
        until = min(deadline, time.monotonic() + self.rng.uniform(*self.interval))
        while time.monotonic() < until and process.poll() is None:
            time.sleep(POLL_S)
        if process.poll() is not None or time.monotonic() >= deadline:
            return None
        kind = signal.SIGTERM if self.rng.random() < self.sigterm else signal.SIGKILL
        process.send_signal(kind)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.failures.append(f"run {self.launched} did not stop within {STOP_TIMEOUT_S} s of SIGTERM")
            process.kill()
        return kind.name

    def record(self, kind: str | None, exit_code: int, workdir: pathlib.Path) -> None:
        """Notes how the last run ended, and every loss in metrics.jsonl (before the next run drops the steps it will
        replay). An exit code its end does not explain, or a SIGTERM stop whose checkpoint is not at its last logged
        step, is a failure."""
        records = _step_records(workdir)
        for record in records:
            self.losses[record["step"]][_bits(record["loss"])] = record["loss"]
        resumed_at = _resumed_at(self.log(self.launched).read_text())
        last = max((record["step"] for record in records), default=0)
        trained = resumed_at is not None and last > resumed_at  # else the records are the earlier runs'
        run = Run(self.launched, kind, exit_code, resumed_at, last if trained else None)
        self.runs.append(run)
        at = f"at step {run.last_step}" if run.last_step else "before logging a step"
        self.say(f"run {run.number}: {run.kind or 'no signal'} {at}, exit code {run.exit_code}")
        if run.exit_code not in EXPECTED_EXITS[run.kind]:
            self.failures.append(f"run {run.number} exited with {run.exit_code}; see {self.log(run.number)}")
        saved = _newest_checkpoint(workdir)
        if run.exit_code == STOPPED and run.last_step and saved != run.last_step:
            self.failures.append(f"run {run.number} stopped at step {run.last_step}; its newest checkpoint is {saved}")

    def train_unbroken(self, workdir: pathlib.Path) -> None:
        """Trains the same config in `workdir` without kills."""
        self.say(f"training the unbroken reference run in {workdir}")
        log = self.logs / "reference.log"
        if self.launch(workdir, log).wait() != 0:
            self.failures.append(f"the reference run failed; see {log}")


def _step_records(workdir: pathlib.Path) -> list[dict]:
    """The training steps' records (those with a loss) in metrics.jsonl; a line cut short by SIGKILL is left out,
    as the trainer drops it when it resumes."""
    path = workdir / "metrics.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [record for record in records if "loss" in record]


def _resumed_at(output: str) -> int | None:
    """The step a run started training from, by its output: the checkpoint it resumed from, 0 if it started afresh,
    or None if it died before it got to training."""
    if TRAINING not in output:
        return None
    resumed = RESUMED.search(output)
    return int(resumed.group(1)) if resumed else 0


def _newest_checkpoint(workdir: pathlib.Path) -> int:
    """The newest checkpoint step in `workdir` (orbax renames a step's directory into place when it commits it),
    or 0 when there is none."""
    directory = workdir / "checkpoints"
    return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=0) if directory.is_dir() else 0


def steps_lost(runs: list[Run]) -> dict[str, int]:
    """Steps re-run after each kind of kill: a killed run's last logged step minus the step that the next run to get
    to training resumed from."""
    lost = {"SIGTERM": 0, "SIGKILL": 0}
    for i, run in enumerate(runs):
        resumed = next((later.resumed_at for later in runs[i + 1 :] if later.resumed_at is not None), None)
        if run.kind and run.last_step and resumed is not None:
            lost[run.kind] += run.last_step - resumed
    return lost


def _bits(value: float) -> bytes:
    """A logged loss (a float32 written as a Python float) as the float32's bytes."""
    return np.float32(value).tobytes()


def loss_mismatches(losses: dict[int, dict[bytes, float]], reference: pathlib.Path) -> list[str]:
    """Each loss a step of the soaked run logged (`losses`: step -> {float32 bytes: loss}, every value it logged, in
    any run) other than the reference's, bit for bit, and the steps it never logged."""
    expected = {record["step"]: record["loss"] for record in _step_records(reference)}
    problems = [
        f"step {step}: loss {loss!r}, the unbroken run's {expected.get(step)!r}"
        for step, seen in sorted(losses.items())
        for bits, loss in seen.items()
        if step not in expected or bits != _bits(expected[step])
    ]
    missing = sorted(set(expected) - set(losses))
    return problems + ([f"steps never logged: {missing[:10]}"] if missing else [])


def param_mismatches(soaked: pathlib.Path, reference: pathlib.Path) -> list[str]:
    """The parameters whose final values differ between the two runs, bit for bit."""
    import jax
    from absl import logging

    from hybridlm.api import load_workdir

    logging.set_verbosity(logging.ERROR)  # orbax's warnings about opening the checkpoints read-only
    ours, theirs = load_workdir(soaked), load_workdir(reference)
    if ours.step != theirs.step:
        return [f"the final checkpoints are at steps {ours.step} and {theirs.step}"]
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(ours.params)]
    pairs = zip(paths, jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params))
    return [f"parameter {path} differs" for path, a, b in pairs if np.asarray(a).tobytes() != np.asarray(b).tobytes()]


def summary(runs: list[Run]) -> list[str]:
    """Kills survived by kind (and how the SIGTERMs ended), and steps lost to each kind."""
    kinds = collections.Counter(run.kind for run in runs if run.kind)
    sigterm_exits = collections.Counter(run.exit_code for run in runs if run.kind == "SIGTERM")
    exits = ", ".join(f"exit {code} x{n}" for code, n in sorted(sigterm_exits.items()))
    lost = steps_lost(runs)
    return [
        f"kills survived: {sum(kinds.values())} (SIGTERM {kinds['SIGTERM']}: {exits or 'none'}; "
        f"SIGKILL {kinds['SIGKILL']}) over {len(runs)} runs",
        f"steps lost (re-run after a kill): {sum(lost.values())} "
        f"(SIGTERM {lost['SIGTERM']}, SIGKILL {lost['SIGKILL']})",
    ]


def main(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    directory = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="soak-"))
    soaked = directory / "soaked"
    reference = pathlib.Path(args.reference) if args.reference else directory / "reference"
    soak = Soak(args, overrides, directory)
    if not args.reference:
        soak.train_unbroken(reference)  # first: it fills the compilation cache, so no soaked run is killed compiling
    if not soak.failures:
        soak.say(f"soaking {args.config} in {soaked} for {args.minutes:g} min, a kill every {args.interval} s")
        soak.soak(soaked)
    if steps_lost(soak.runs)["SIGTERM"]:
        soak.failures.append("a SIGTERM stop lost steps")
    if not soak.failures:
        soak.failures += loss_mismatches(soak.losses, reference) + param_mismatches(soaked, reference)
    print("\n".join(summary(soak.runs)))
    for failure in soak.failures[:20]:
        print(f"failure: {failure}")
    steps = len(_step_records(reference))
    verdict = "losses of every step run and the final parameters equal the unbroken run's bit for bit"
    print(f"FAIL: {len(soak.failures)} problems" if soak.failures else f"PASS: {steps} steps; {verdict}")
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
