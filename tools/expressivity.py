"""The expressivity grid: trains every (task, architecture, seed) cell on a task's training lengths and scores
exact-match accuracy on answer tokens at longer test lengths.

Run from the repository root (CPU or GPU):

    python tools/expressivity.py --out=results/expressivity --task=parity --steps=2000 --seeds=0,1,2
    python tools/expressivity.py --out=results/expressivity --all --task_args=mqar:num_pairs=16,train_min=64

Task arguments. Each task's lengths default to its `hybridlm.tasks.LENGTHS` (train_min, train_max, test_max, in the
task's own unit) and its own settings to its constructor's (e.g. mqar's num_pairs, code's num_variables); a
--task_args=TASK:KEY=VALUE,... flag (repeatable) overrides any of them for TASK. A value is an int when it reads as
one, else a string. Every results line records the task's full arguments; a rerun skips only the cells finished with
the same ones, and each task's table holds the lines of its current arguments.

Architectures (`ARCHITECTURES`) share --width, --depth and --heads and are matched in parameter count: the largest of
them at an MLP of 3 * width (GDN alone, its layers being the heaviest) sets the target, and each other one gets the
MLP width whose `hybridlm.model.count_params` is nearest it (`matched_mlp_hidden`); the tables list each one's
parameters and MLP width.

Each cell trains its model with `hybridlm.trainer.Trainer` on the `task` data source (examples of lengths train_min
to train_max, the loss on answer tokens only), in --out/runs/TASK/ARCH/seedS. Scoring draws --eval_examples test
examples of lengths train_min to test_max, takes the model's argmax at every position (the answers are
teacher-forced next tokens, so no generation) and buckets them by length (`Lengths.buckets`: train_max, then powers
of two up to test_max; hybridlm.tasks.accuracy_by_length). Each finished cell appends one JSON line to
--out/results.jsonl; a rerun skips the cells already there (and a cell's interrupted training resumes from its
checkpoint). Compiled programs are kept in JAX's persistent cache in --out/jax_cache: the seeds of a task and
architecture compile the same programs, so the grid runs seed by seed and only the first seed compiles. Then, for
each task, --out/TASK.md holds the token accuracy per architecture and length bucket (mean +- std over seeds) and
--out/TASK.png plots it against test length.

Cells run one after another, each its own program, unless --jobs=N runs them in N processes at once that share the
local accelerator (process i takes cells i, i+N, ..., as --shard=i/N would); the command then writes the tables from
the cells that finished, also when some processes failed or were stopped (a SIGTERM, e.g. from `timeout`, reaches
them all). Several hosts split a grid with --shard=i/n each, and one run without --shard writes the tables.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_dict

from hybridlm.shards import parse_shard, run_local_shards
from hybridlm.tasks import LENGTHS, TASKS, Lengths, Task, make_task

TASK = flags.DEFINE_list("task", [], "Tasks to run (names of hybridlm.tasks.TASKS), e.g. parity,s5.")
ALL = flags.DEFINE_bool("all", False, "Run every task of hybridlm.tasks.TASKS.")
ARCHS = flags.DEFINE_list("archs", None, "Architectures to run (default: all of ARCHITECTURES).")
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each one's model init and training examples.")
OUT = flags.DEFINE_string("out", None, "Directory of results.jsonl, the runs, and each task's table and plot.")
STEPS = flags.DEFINE_integer("steps", 2000, "Training steps per cell.")
BATCH = flags.DEFINE_integer("batch", 64, "Examples per training batch.")
WIDTH = flags.DEFINE_integer("width", 128, "d_model of every architecture.")
DEPTH = flags.DEFINE_integer("depth", 4, "Layers of every architecture (a multiple of 4, the hybrid's pattern).")
HEADS = flags.DEFINE_integer("heads", 4, "Attention and GDN heads.")
LR = flags.DEFINE_float("lr", 1e-3, "Peak learning rate (cosine schedule, warmup 10% of the steps).")
TASK_ARGS = flags.DEFINE_multi_string(
    "task_args",
    [],
    "TASK:KEY=VALUE,...: overrides TASK's lengths (train_min, train_max, test_max) or own settings, e.g. "
    "parity:train_max=40,test_max=256 (repeatable).",
)
EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 512, "Test examples scored per cell.")
SHARD = flags.DEFINE_string(
    "shard",
    None,
    "i/n: run only the grid's cells i, i+n, i+2n, ... (in seed, task, architecture order) and write no tables; run "
    "the command without it afterwards to write them.",
)
JOBS = flags.DEFINE_integer(
    "jobs",
    1,
    "Processes that share the local accelerator, each running one shard (--shard=i/jobs) of the grid at once; a small "
    "cell leaves a GPU mostly idle, so several fill it.",
)

# name -> (layer pattern, GDN beta in [0, 2]): every model is otherwise the same shape but for its MLP width.
ARCHITECTURES = {
    "transformer": (("attn",), True),
    "gdn_beta01": (("gdn",), False),
    "gdn_beta02": (("gdn",), True),
    "hybrid_beta02": (("gdn", "gdn", "gdn", "attn"), True),
    "hybrid_beta01": (("gdn", "gdn", "gdn", "attn"), False),
}
VOCAB_SIZE = 320  # at least the byte tokenizer's 258 ids, which every run config resolves (more for larger tasks)
LENGTH_KEYS = tuple(field.name for field in dataclasses.fields(Lengths))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _ints(flag: flags.FlagHolder) -> list[int]:
    try:
        return [int(value) for value in flag.value]
    except ValueError:
        _fail(f"--{flag.name}={','.join(flag.value)}: give whole numbers separated by commas")


def _value(text: str) -> int | str:
    """A --task_args value: an int when `text` reads as one, else the text."""
    try:
        return int(text)
    except ValueError:
        return text


def parse_task_args(values: list[str]) -> dict[str, dict[str, int | str]]:
    """--task_args values (TASK:KEY=VALUE,...) -> task -> key -> value; later values win. Raises ValueError."""
    overrides: dict[str, dict[str, int | str]] = {}
    for value in values:
        task, _, pairs = value.partition(":")
        items = [pair.partition("=") for pair in pairs.split(",")]
        if task not in TASKS or not all(key and sep for key, sep, _ in items):
            raise ValueError(
                f"--task_args={value}: give TASK:KEY=VALUE,... with TASK one of {sorted(TASKS)}, "
                "e.g. parity:train_max=40,test_max=256"
            )
        overrides.setdefault(task, {}).update({key: _value(text) for key, _, text in items})
    return overrides


def split_args(args: dict[str, Any]) -> tuple[Lengths, dict[str, Any]]:
    """A task's arguments -> its suite lengths and its own settings (make_task's keywords)."""
    return Lengths(**{k: args[k] for k in LENGTH_KEYS}), {k: v for k, v in args.items() if k not in LENGTH_KEYS}


def build(task: str, args: dict[str, Any], seq_len: int, min_len: int, max_len: int, seed: int = 0) -> Task:
    """`task` with its own settings in `args`, `seq_len` and lengths in [min_len, max_len]."""
    return make_task(task, seq_len=seq_len, min_len=min_len, max_len=max_len, seed=seed, **split_args(args)[1])


def task_args(task: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`task`'s full arguments in the suite: its `LENGTHS` and own settings (`Task.settings`), with `overrides`.

    Raises:
      ValueError: for a key the task does not take or values it refuses.
    """
    args = {**dataclasses.asdict(LENGTHS[task]), **overrides}
    try:
        lengths = split_args(args)[0]
        built = build(task, args, 1 << 30, lengths.train_min, lengths.test_max)
    except TypeError as e:
        raise ValueError(f"--task_args for {task}: {e}; the keys are {list(LENGTH_KEYS)} and the task's own") from None
    except ValueError as e:
        raise ValueError(f"--task_args for {task}: {e}") from None
    return {**dataclasses.asdict(lengths), **built.settings()}


def model_shape(
    arch: str, *, vocab_size: int, width: int, depth: int, heads: int, mlp_hidden: int, max_seq_len: int
) -> config_dict.ConfigDict:
    """The model config of `arch` at this shape (float32, no remat, GDN chunks of 16)."""
    from hybridlm.config_defaults import gdn_config, model_config

    pattern, neg_eigval = ARCHITECTURES[arch]
    model = model_config(
        vocab_size=vocab_size,
        d_model=width,
        num_layers=depth,
        layer_pattern=pattern,
        num_heads=heads,
        mlp_hidden=mlp_hidden,
        max_seq_len=max_seq_len,
        gdn=gdn_config(),
    )
    model.dtype, model.remat, model.sliding_window = "float32", "none", max_seq_len
    model.gdn.allow_neg_eigval, model.gdn.chunk_size = neg_eigval, 16
    return model


def count(arch: str, mlp_hidden: int, **shape: int) -> int:
    """The parameter count of `arch` with `mlp_hidden` at `shape` (model_shape's other keywords but max_seq_len)."""
    from hybridlm.model import ModelConfig, count_params

    return count_params(ModelConfig.from_config(model_shape(arch, mlp_hidden=mlp_hidden, max_seq_len=16, **shape)))


def matched_mlp_hidden(*, vocab_size: int, width: int, depth: int, heads: int) -> dict[str, int]:
    """Each architecture's MLP width for matched parameter counts: the target is the largest count over
    `ARCHITECTURES` at an MLP of 3 * width, and each one gets the MLP width whose count is nearest it (the count is
    linear in the MLP width, so within half a unit's parameters of the target)."""
    shape = dict(vocab_size=vocab_size, width=width, depth=depth, heads=heads)
    base = {arch: count(arch, 3 * width, **shape) for arch in ARCHITECTURES}
    target = max(base.values())
    return {
        arch: 3 * width + round((target - params) / (count(arch, 3 * width + 1, **shape) - params))
        for arch, params in base.items()
    }


def _seq_len(task: Task, length: int) -> int:
    """The tokens an example of `task` of `length` takes at most, rounded up to a multiple of 16 (a GDN chunk)."""
    return -(-task.max_tokens(length) // 16) * 16


def cell_config(task: str, arch: str, seed: int, args: dict[str, Any]) -> config_dict.ConfigDict:
    """The run config of one cell: the architecture at the flags' shape and its matched MLP width, trained on `task`
    with `args` (training examples of train_min to train_max; the model takes test_max)."""
    from hybridlm.config_defaults import default_run_config

    lengths, settings = split_args(args)
    longest = build(task, args, 1 << 30, lengths.train_min, lengths.test_max)
    vocab_size = max(VOCAB_SIZE, longest.vocab_size)
    shape = dict(vocab_size=vocab_size, width=WIDTH.value, depth=DEPTH.value, heads=HEADS.value)
    model = model_shape(
        arch, mlp_hidden=matched_mlp_hidden(**shape)[arch], max_seq_len=_seq_len(longest, lengths.test_max), **shape
    )
    config = default_run_config(
        model,
        description=f"expressivity: {task}, {arch}, seed {seed}",
        seq_len=_seq_len(longest, lengths.train_max),
        batch_size=BATCH.value,
        lr=LR.value,
        warmup_steps=STEPS.value // 10,
        num_steps=STEPS.value,
    )
    config.seed = seed
    config.data.source, config.data.task = "task", task
    config.data.task_args = dict(min_len=lengths.train_min, max_len=lengths.train_max, **settings)
    config.train.update(
        log_every=max(1, STEPS.value // 10), eval_every=STEPS.value, eval_batches=2, checkpoint_every=STEPS.value
    )
    return config


def run_cell(task: str, arch: str, seed: int, args: dict[str, Any], out: pathlib.Path) -> dict[str, Any]:
    """Trains and scores one cell of `task` with its full arguments `args`; returns its results line."""
    import jax
    import numpy as np
    from flax import nnx

    from hybridlm.model import count_params
    from hybridlm.tasks import accuracy_by_length
    from hybridlm.trainer import Trainer

    config = cell_config(task, arch, seed, args)
    trainer = Trainer(config, out / "runs" / task / arch / f"seed{seed}")
    metrics = trainer.train()
    params = trainer.initial_state()["params"]  # the checkpoint the run ended with
    model = nnx.merge(trainer.program.graphdef, params)
    lengths = split_args(args)[0]
    test = build(task, args, config.model.max_seq_len, lengths.train_min, lengths.test_max, seed=10_000 + seed)
    drawn = [test[i] for i in range(EVAL_EXAMPLES.value)]
    examples = {k: np.stack([example[k] for example in drawn]) for k in drawn[0]}
    predict = jax.jit(lambda tokens: model(tokens).argmax(-1))
    starts = range(0, EVAL_EXAMPLES.value, BATCH.value)
    predictions = np.concatenate([np.asarray(predict(examples["inputs"][i : i + BATCH.value])) for i in starts])
    scores = accuracy_by_length(predictions, examples, lengths.buckets())
    return {
        "task": task,
        "task_args": {**dataclasses.asdict(lengths), **test.settings()},
        "arch": arch,
        "seed": seed,
        "params": count_params(trainer.model_config),
        "mlp_hidden": trainer.model_config.mlp_hidden,
        "steps": STEPS.value,
        "final_loss": metrics.get("loss"),
        "accuracy": {str(bucket): score.token for bucket, score in scores.items()},
        "sequence_accuracy": {str(bucket): score.sequence for bucket, score in scores.items()},
    }


def read_results(path: pathlib.Path) -> list[dict[str, Any]]:
    """The results lines written so far."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _describe(args: dict[str, Any]) -> str:
    """A task's arguments in words, for its table."""
    own = ", ".join(f"{k}={v}" for k, v in split_args(args)[1].items())
    least, most, longest = args["train_min"], args["train_max"], args["test_max"]
    lengths = f"trained on lengths {least}-{most}, tested on {least}-{longest}"
    return f"{lengths}; {own}" if own else lengths


def write_report(
    task: str, args: dict[str, Any], results: list[dict[str, Any]], archs: list[str], out: pathlib.Path
) -> None:
    """out/TASK.md (token accuracy, mean +- std over seeds, per architecture and bucket, of the lines with `args`)
    and out/TASK.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = [r for r in results if r["task"] == task and r.get("task_args") == args]
    rows = {arch: [r for r in mine if r["arch"] == arch] for arch in archs}
    buckets = sorted({int(b) for rs in rows.values() for r in rs for b in r["accuracy"]})
    lines = [
        f"# {task}: exact-match accuracy on answer tokens by test length (mean +- std over seeds)",
        "",
        f"Task arguments: {_describe(args)}. Buckets are named by the greatest length they hold.",
        "",
        "| architecture | params | mlp_hidden | seeds | " + " | ".join(f"<= {b}" for b in buckets) + " |",
        "|---|---|---|---|" + "---|" * len(buckets),
    ]
    figure, axes = plt.subplots(figsize=(6, 4))
    for arch, runs in rows.items():
        if not runs:
            continue
        scores = np.array([[r["accuracy"].get(str(b), np.nan) for b in buckets] for r in runs])
        mean, std = np.nanmean(scores, axis=0), np.nanstd(scores, axis=0)
        cells = " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(mean, std))
        lines.append(f"| {arch} | {runs[0]['params']:,} | {runs[0]['mlp_hidden']} | {len(runs)} | {cells} |")
        axes.errorbar(buckets, mean, yerr=std, marker="o", capsize=3, label=arch)
    axes.set(xlabel="test length (bucket's greatest)", ylabel="token accuracy", ylim=(0, 1.02), title=task)
    axes.set_xscale("log", base=2)
    axes.set_xticks(buckets, [str(b) for b in buckets])
    axes.minorticks_off()
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"{task}.png", dpi=120)
    plt.close(figure)
    (out / f"{task}.md").write_text("\n".join(lines) + "\n")


def _use_compilation_cache(path: pathlib.Path) -> None:
    """Keeps compiled programs in JAX's persistent cache at `path`: a cell's seeds (and a resumed cell) compile
    the same train and scoring programs, so all but the first load them."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_workers(jobs: int) -> list[str]:
    """Runs this command as `jobs` processes at once, process i with --shard=i/jobs (hybridlm.shards), and waits for
    them (a SIGTERM or SIGINT reaches them all); returns "i/jobs (exit code)" for each that failed."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), *sys.argv[1:], "--jobs=1"]
    return run_local_shards(command, jobs)


def write_reports(tasks: list[str], args: dict[str, dict[str, Any]], path: pathlib.Path, archs: list[str]) -> None:
    """Each task's table and plot beside the results file `path`, from the cells finished so far."""
    results = read_results(path)
    for task in tasks:
        write_report(task, args[task], results, archs, path.parent)
        print(f"{task}: {path.parent / f'{task}.md'}, {path.parent / f'{task}.png'}", flush=True)


def _key(line: dict[str, Any]) -> tuple[str, str, int, str]:
    """A results line's cell: task, architecture, seed and the task's arguments."""
    return line["task"], line["arch"], line["seed"], json.dumps(line.get("task_args"), sort_keys=True)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    tasks = sorted(TASKS) if ALL.value else TASK.value
    archs = ARCHS.value or list(ARCHITECTURES)
    if OUT.value is None or not tasks:
        _fail("give --out=DIR and --task=NAME[,NAME...] or --all")
    for name in tasks:
        if name not in TASKS:
            _fail(f"--task={name}: not a task; choose from {sorted(TASKS)}")
    for name in archs:
        if name not in ARCHITECTURES:
            _fail(f"--archs={name}: not an architecture; choose from {list(ARCHITECTURES)}")
    if DEPTH.value % 4:
        _fail(f"--depth={DEPTH.value}: give a multiple of 4 (the hybrid's gdn,gdn,gdn,attn pattern)")
    seeds = _ints(SEEDS)
    try:
        shard = (0, 1) if SHARD.value is None else parse_shard(SHARD.value)
    except ValueError as e:
        _fail(str(e))
    if JOBS.value < 1 or (JOBS.value > 1 and SHARD.value is not None):
        _fail(f"--jobs={JOBS.value}: give 1 or more processes, and no --shard with more than 1")
    try:
        overrides = parse_task_args(TASK_ARGS.value)
        args = {task: task_args(task, overrides.get(task, {})) for task in tasks}
    except ValueError as e:
        _fail(str(e))
    out = pathlib.Path(OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    _use_compilation_cache(out / "jax_cache")
    path = out / "results.jsonl"
    if JOBS.value > 1 and (failed := run_workers(JOBS.value)):
        write_reports(tasks, args, path, archs)  # of the cells that finished
        _fail(f"shards {', '.join(failed)} failed (their errors are above); rerun the command to finish their cells")
    cells = [(task, arch, seed) for seed in seeds for task in tasks for arch in archs]
    done = {_key(r) for r in read_results(path)}
    for task, arch, seed in cells[shard[0] :: shard[1]]:
        if _key(dict(task=task, arch=arch, seed=seed, task_args=args[task])) in done:
            print(f"{task} {arch} seed {seed}: done, skipped", flush=True)
            continue
        print(f"{task} {arch} seed {seed}: training", flush=True)
        try:
            line = run_cell(task, arch, seed, args[task], out)
        except ValueError as e:  # ConfigError and data errors, before anything trains
            _fail(str(e))
        with path.open("a") as f:  # one write of one line: shards appending at once do not interleave
            f.write(json.dumps(line) + "\n")
    if SHARD.value is None:
        write_reports(tasks, args, path, archs)


if __name__ == "__main__":
    app.run(main)
