"""Runs a scaling ladder: `python -m hybridlm.sweep --ladder=NAME --workdir=DIR [--shard=i/n | --jobs=N]
[--archs=a,b] [--sizes=x,y] [--multiples=m,n] [--stop_after=K] [--config.<key>=<value> ...]`.

NAME is a registry module (`ladder`: experiments/ladder.py) or a file that, like it, defines `get_config(arg)` and
`runs(archs, sizes)`: the run args in the order to train them, each a stable run `ARCH-SIZE` followed by its decays
`ARCH-SIZE/decayMx`, whose configs set `config.ladder` (arch, family, multiple, params) and, a decay,
`config.init_from_step`. Each run trains in DIR/<arg with "/" as ".">, one after another, through the normal entry
point in a subprocess: `python -m hybridlm.train --config=<file>:<arg> --workdir=... [--config.<key>=<value> ...]`,
a decay with `--config.init_from=` its stable run's workdir.

What is done is read from DIR, so a killed sweep resumes where it stopped: a run whose workdir holds its final
checkpoint is not trained again, a run with an earlier checkpoint resumes from it (the trainer's own resume), a decay
that is recorded is skipped, and so is a stable run whose decays are all recorded (so a results.jsonl copied from
another host or an earlier machine is enough to skip finished families; their workdirs need not travel). A stable run
trains only as far as the latest branch step of its decays still to record, where its config sets the schedule's end
(`config.optim.schedule_steps`, as the ladder's do), so the lr it trains with is the full run's: with
`--multiples=0.5,1` (the decays of those budget multiples alone) a family's first records need a fraction of its
steps, and a later sweep with more multiples resumes the same stable run from its last checkpoint. Each decay that
finishes appends one JSON line to DIR/results.jsonl, as hybridlm.scaling.records reads it: arch, run, params
(non-embedding N), params_total, tokens (D, the decay's end step x batch tokens), flops (hybridlm.flops per token x D),
loss (the final held-out loss), tokens_per_sec (the median of the logged steps'), steps, corpus (`corpus_identity`:
the fingerprint of the token files, so results from several machines can be pooled only where they trained on the
same data; the sweep refuses to add to a results.jsonl whose records name other data). `--shard=i/n` keeps the
families (a stable run and its decays, which need its checkpoints) whose index in the run order is i modulo n;
`--jobs=N` runs N such shards at once on this host (N = 3: one architecture each, as the run order interleaves them).
Before each run a line says which run, its steps, the FLOPs done and left, and the ETA at the FLOP rate this sweep has
reached. SIGINT and SIGTERM are passed to the running trainer, which saves a checkpoint; the sweep then stops with its
exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from absl import flags
from ml_collections import config_dict, config_flags

from hybridlm import checkpoint, named_configs
from hybridlm.data.paths import expand_all
from hybridlm.data.pipeline import first_difference
from hybridlm.data.token_files import read_metadata
from hybridlm.shards import parse_shard, run_local_shards

RESULTS_FILE = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the sweep: its arg (`ARCH-SIZE[/decayMx]`), config and workdir; `parent` is a decay's stable run's
    workdir; `overrides` are flags that only this run's trainer gets."""

    arg: str
    config: config_dict.ConfigDict
    workdir: pathlib.Path
    parent: pathlib.Path | None
    overrides: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.config.ladder.family

    @property
    def flops_per_step(self) -> float:
        from hybridlm import flops
        from hybridlm.model import ModelConfig

        tokens = self.config.data.batch_size * self.config.data.seq_len
        return flops.flops_per_token(ModelConfig.from_config(self.config.model), self.config.data.seq_len) * tokens

    @property
    def records(self) -> bool:
        """Whether it is a decay, which records a result."""
        return self.parent is not None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's flags, and the `--config.<key>=<value>` overrides passed to every run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", required=True, help="a registry module (ladder) or a file defining runs()")
    parser.add_argument("--workdir", required=True, help="holds each run's workdir and results.jsonl")
    parser.add_argument("--shard", default="0/1", help="i/n: the families whose index is i modulo n")
    parser.add_argument("--archs", default=None, help="comma-separated architectures (default: all)")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: all)")
    parser.add_argument(
        "--multiples", default=None, help="comma-separated budget multiples whose decays to run (default: all)"
    )
    parser.add_argument("--stop_after", type=int, default=None, help="stop after training this many runs")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="sweeps run at once on this host, process i as --shard=i/jobs (small rungs leave a GPU mostly idle)",
    )
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unknown arguments {' '.join(bad)}; only --config.<key>=<value> overrides pass to the runs")
    return args, rest


def shard_runs(runs: list[Run], index: int, count: int) -> list[Run]:
    """The runs of the families whose index (in order of first appearance) is `index` modulo `count`."""
    families = list(dict.fromkeys(run.family for run in runs))
    mine = {family for i, family in enumerate(families) if i % count == index}
    return [run for run in runs if run.family in mine]


def _ladder_module(name: str) -> tuple[str, Any]:
    """The ladder's file and its module, loaded from the file."""
    file = named_configs.resolve(name)
    module = named_configs.load_module(file)
    if not hasattr(module, "runs"):
        raise ValueError(f"--ladder={name}: {file} defines no runs(archs, sizes); model it on experiments/ladder.py")
    return file, module


def load_config(spec: str, overrides: list[str]) -> config_dict.ConfigDict:
    """The config `--config=<spec> <overrides>` gives the trainer, read as it reads it (config_flags)."""
    values, argv = flags.FlagValues(), ["sweep", f"--config={spec}", *overrides]
    config_flags.DEFINE_config_file("config", None, "the run config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def plan(
    ladder: str, workdir: pathlib.Path, overrides: list[str], archs: list[str] | None, sizes: list[str] | None
) -> tuple[str, list[Run]]:
    """The ladder's file and its runs, in order, with their configs and workdirs."""
    file, module = _ladder_module(ladder)
    runs = []
    for arg in module.runs(archs, sizes):
        config = load_config(f"{file}:{arg}", overrides)
        stable = arg.partition("/")[0]
        parent = workdir / stable if config.get("init_from_step") is not None else None
        runs.append(Run(arg, config, workdir / arg.replace("/", "."), parent))
    return file, runs


def select_multiples(runs: list[Run], multiples: list[str] | None) -> list[Run]:
    """The stable runs and the decays whose budget multiple (`config.ladder.multiple`) is one of `multiples` (None:
    all); ValueError naming the ladder's multiples where one is not among them."""
    if multiples is None:
        return runs
    known = sorted({run.config.ladder.multiple for run in runs if run.records})
    try:
        wanted = {float(m) for m in multiples}
    except ValueError:
        wanted = set()
    if not wanted or not wanted <= set(known):
        raise ValueError(
            f"--multiples={','.join(multiples)}: the ladder's decays have the multiples {', '.join(map(str, known))}"
        )
    return [run for run in runs if not run.records or run.config.ladder.multiple in wanted]


def stop_at_last_branch(run: Run, to_record: list[Run]) -> Run:
    """`run`, a stable run, trained only to the latest branch step of its family's decays in `to_record` (those still
    to record) where its config sets the schedule's end; else (a decay, a family with nothing to record, a step
    count that places the schedule's end) `run` as it is."""
    branches = [decay.config.init_from_step for decay in to_record if decay.family == run.family]
    step = max(branches, default=run.config.train.num_steps)
    if run.records or run.config.optim.get("schedule_steps") is None or step >= run.config.train.num_steps:
        return run
    config = run.config.copy_and_resolve_references()
    config.train.num_steps = step
    return dataclasses.replace(run, config=config, overrides=(f"--config.train.num_steps={step}",))


def first_step(run: Run) -> int:
    """The step the run starts at: a decay's branch step, else 0."""
    return run.config.init_from_step if run.records else 0


def trained_step(run: Run) -> int:
    """The step the run's own newest checkpoint holds, else `first_step`."""
    steps = checkpoint.saved_steps(checkpoint.checkpoints_dir(run.workdir))
    return max(steps) if steps else first_step(run)


def finished(run: Run) -> bool:
    """Whether the run's workdir holds an intact checkpoint at its last step."""
    step = run.config.train.num_steps
    return checkpoint.checkpoint_problem(checkpoint.checkpoints_dir(run.workdir) / str(step), step) is None


def read_results(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of results.jsonl (none where there is no file)."""
    path = workdir / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corpus_identity(config: config_dict.ConfigDict) -> dict[str, Any]:
    """What names the documents a run trains on, the same for every rung of a ladder. Token files: per directory of
    `config.data.paths`' files, in their order, the fingerprint its metadata.json records (tools/prepare_data.py's
    corpora: files, bytes, a hash of the contents, tokens, the tokenizer's hash), else the files' names and sizes;
    ValueError where a path names no file. Other sources: the source, its paths and byte cap."""
    data = config.data
    if data.source != "token_files":
        return {"source": data.source, "paths": list(data.paths), "max_bytes": data.get("max_bytes")}
    directories: dict[str, list[str]] = {}
    for path in expand_all(data.paths, "config.data.paths"):
        directories.setdefault(os.path.dirname(os.path.abspath(path)), []).append(path)
    corpora = []
    for directory, paths in directories.items():
        fingerprint = (read_metadata(directory) or {}).get("fingerprint")
        corpora.append(fingerprint or {os.path.basename(p): os.path.getsize(p) for p in paths})
    return {"source": data.source, "corpora": corpora}


def check_corpus(workdir: pathlib.Path, rows: list[dict[str, Any]], identity: dict[str, Any]) -> None:
    """ValueError where a row of results.jsonl trained on other data than `identity` names."""
    for row in rows:
        difference = first_difference(row.get("corpus"), identity, "corpus")
        if difference:
            raise ValueError(
                f"{workdir / RESULTS_FILE} records {row['run']} on other data than this sweep's ({difference}); "
                "sweep the corpus its records name (--config.data.paths) or use another --workdir"
            )


def result(run: Run, corpus: dict[str, Any]) -> dict[str, Any]:
    """The results.jsonl line of a finished decay, from its config, metrics.jsonl and `corpus` (`corpus_identity`)."""
    from hybridlm.model import ModelConfig, count_params

    rows = [json.loads(line) for line in checkpoint.metrics_file(run.workdir).read_text().splitlines() if line.strip()]
    num_steps = run.config.train.num_steps
    losses = [r["eval_loss"] for r in rows if r.get("step") == num_steps and "eval_loss" in r]
    rates = sorted(float(r["tokens_per_sec"]) for r in rows if "tokens_per_sec" in r)
    if not losses:
        raise ValueError(
            f"{checkpoint.metrics_file(run.workdir)} has no held-out loss at step {num_steps}; rerun the sweep"
        )
    tokens = num_steps * run.config.data.batch_size * run.config.data.seq_len
    return {
        "arch": run.config.ladder.arch,
        "run": run.arg,
        "params": run.config.ladder.params,
        "params_total": count_params(ModelConfig.from_config(run.config.model)),
        "tokens": tokens,
        "flops": run.flops_per_step * num_steps,
        "loss": float(losses[-1]),
        "tokens_per_sec": rates[len(rates) // 2] if rates else None,
        "steps": num_steps,
        "corpus": corpus,
    }


def append_result(workdir: pathlib.Path, row: dict[str, Any]) -> None:
    """Appends `row` to results.jsonl in one write, flushed to disk."""
    with open(workdir / RESULTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def progress_line(position: int, total: int, run: Run, done_flops: float, left_flops: float, rate: float | None) -> str:
    """Which run, how far it and the sweep are, and the ETA at `rate` FLOP/s (None: not measured yet)."""
    eta = _duration(left_flops / rate) if rate else "after the first run"
    share = done_flops / (done_flops + left_flops) if done_flops + left_flops else 1.0
    return (
        f"sweep: run {position}/{total} {run.arg}: step {trained_step(run)} of {run.config.train.num_steps}; "
        f"{done_flops:.3g} of {done_flops + left_flops:.3g} FLOPs done ({share:.0%}); ETA {eta}"
    )


def train(file: str, run: Run, overrides: list[str]) -> int:
    """Trains `run` in a subprocess of the normal entry point; returns its exit code. SIGINT and SIGTERM sent to the
    sweep are passed on (the trainer ignores a second one, e.g. Ctrl-C's, which reaches it too)."""
    command = [sys.executable, "-m", "hybridlm.train", f"--config={file}:{run.arg}", f"--workdir={run.workdir}"]
    command += [*overrides, *run.overrides] + ([f"--config.init_from={run.parent}"] if run.parent is not None else [])
    child = subprocess.Popen(command)
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    """Trains and records every run of the shard not yet done; returns the exit code."""
    workdir = pathlib.Path(args.workdir)
    split = lambda value: value.split(",") if value else None  # noqa: E731
    file, runs = plan(args.ladder, workdir, overrides, split(args.archs), split(args.sizes))
    runs = select_multiples(shard_runs(runs, *parse_shard(args.shard)), split(args.multiples))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = read_results(workdir)
    corpus = corpus_identity(runs[0].config) if runs else None  # a ladder's runs share their data
    if corpus is not None:
        check_corpus(workdir, rows, corpus)
    recorded = {row["run"] for row in rows}
    to_record = [run for run in runs if run.records and run.arg not in recorded]
    pending = {run.family for run in to_record}
    runs = [stop_at_last_branch(run, to_record) for run in runs]
    needed = {run.arg for run in runs if (run.arg not in recorded if run.records else run.family in pending)}
    left = {
        run.arg: run.flops_per_step * (run.config.train.num_steps - trained_step(run))
        for run in runs
        if run.arg in needed
    }
    done_flops = sum(run.flops_per_step * (run.config.train.num_steps - first_step(run)) for run in runs)
    done_flops -= sum(left.values())
    started, trained_flops, trained = time.monotonic(), 0.0, 0
    for position, run in enumerate(runs, start=1):
        if run.arg not in needed or (not run.records and finished(run)):
            continue
        if not finished(run):
            if args.stop_after is not None and trained >= args.stop_after:
                print(f"sweep: stopped after {trained} runs (--stop_after); rerun to go on", flush=True)
                return 0
            rate = trained_flops / (time.monotonic() - started) if trained_flops else None
            print(progress_line(position, len(runs), run, done_flops, sum(left.values()), rate), flush=True)
            code = train(file, run, overrides)
            if code != 0:
                print(f"sweep: {run.arg} exited with code {code}; rerun the sweep to resume it", file=sys.stderr)
                return code
            trained, trained_flops, done_flops = trained + 1, trained_flops + left[run.arg], done_flops + left[run.arg]
            left[run.arg] = 0.0
        if run.records:
            append_result(workdir, result(run, corpus))
            print(f"sweep: recorded {run.arg} in {workdir / RESULTS_FILE}", flush=True)
    print(f"sweep: all {len(runs)} runs of the shard are done; results in {workdir / RESULTS_FILE}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    if args.jobs != 1:
        if args.jobs < 1 or args.shard != "0/1":
            print(
                f"error: --jobs={args.jobs}: give 1 or more processes, and no --shard with more than 1", file=sys.stderr
            )
            return 2
        failed = run_local_shards([sys.executable, "-m", "hybridlm.sweep", *argv, "--jobs=1"], args.jobs)
        if failed:
            print(f"sweep: shards {', '.join(failed)} failed; rerun the sweep to resume them", file=sys.stderr)
        return 1 if failed else 0
    import jax

    jax.config.update("jax_platforms", "cpu")  # this process only counts parameters: the GPU stays the trainer's
    try:
        return sweep(args, overrides)
    except (ValueError, named_configs.ConfigFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
