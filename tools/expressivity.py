"""The expressivity grid: trains every (task, architecture, seed) cell on a task's training lengths and scores
exact-match accuracy on answer tokens at longer test lengths.

Run from the repository root (CPU or GPU):

    python tools/expressivity.py --out=expressivity --task=parity --steps=2000 --seeds=0,1,2
    python tools/expressivity.py --out=expressivity --all --archs=transformer,gdn_beta02

Each cell trains a model of the architecture (`ARCHITECTURES`: the same width, depth, heads and MLP for all, so their
parameter counts are close; each is listed in the tables) with `hybridlm.trainer.Trainer` on the `task` data source
(examples of lengths --train_lengths, the loss on answer tokens only), in --out/runs/TASK/ARCH/seedS. Scoring draws
--eval_examples test examples of lengths 1 to the last of --test_lengths, takes the model's argmax at every position
(the answers are teacher-forced next tokens, so no generation), and buckets them by --test_lengths
(hybridlm.tasks.accuracy_by_length). Each finished cell appends one JSON line to --out/results.jsonl; a rerun skips
the cells already there (and a cell's interrupted training resumes from its checkpoint). Then, for each task,
--out/TASK.md holds the token accuracy per architecture and length bucket (mean +- std over seeds) and --out/TASK.png
plots it against test length. Lengths are in each task's own unit (hybridlm.tasks).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_dict

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
TRAIN_LENGTHS = flags.DEFINE_list("train_lengths", ["3", "40"], "Least and greatest training example length.")
TEST_LENGTHS = flags.DEFINE_list(
    "test_lengths", ["40", "64", "128", "256"], "Ascending test length buckets (each holds lengths above the last)."
)
EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 512, "Test examples scored per cell.")

# name -> (layer pattern, GDN beta in [0, 2]): every model is otherwise the same shape.
ARCHITECTURES = {
    "transformer": (("attn",), True),
    "gdn_beta01": (("gdn",), False),
    "gdn_beta02": (("gdn",), True),
    "hybrid_beta02": (("gdn", "gdn", "gdn", "attn"), True),
    "hybrid_beta01": (("gdn", "gdn", "gdn", "attn"), False),
}
VOCAB_SIZE = 320  # at least the byte tokenizer's 258 ids, which every run config resolves


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _ints(flag: flags.FlagHolder) -> list[int]:
    try:
        return [int(value) for value in flag.value]
    except ValueError:
        _fail(f"--{flag.name}={','.join(flag.value)}: give whole numbers separated by commas")


def cell_config(task: str, arch: str, seed: int, seq_len: int) -> config_dict.ConfigDict:
    """The run config of one cell: the architecture at the flags' shape, trained on `task` at --train_lengths."""
    from hybridlm.config_defaults import gdn_config, model_config, run_config

    pattern, neg_eigval = ARCHITECTURES[arch]
    model = model_config(
        vocab_size=VOCAB_SIZE,
        d_model=WIDTH.value,
        num_layers=DEPTH.value,
        layer_pattern=pattern,
        num_heads=HEADS.value,
        mlp_hidden=3 * WIDTH.value,
        max_seq_len=seq_len,
        gdn=gdn_config(),
    )
    model.dtype, model.remat, model.sliding_window = "float32", "none", seq_len
    model.gdn.allow_neg_eigval, model.gdn.chunk_size = neg_eigval, 16
    config = run_config(
        model,
        description=f"expressivity: {task}, {arch}, seed {seed}",
        seq_len=seq_len,
        batch_size=BATCH.value,
        lr=LR.value,
        warmup_steps=STEPS.value // 10,
        num_steps=STEPS.value,
    )
    least, greatest = _ints(TRAIN_LENGTHS)
    config.seed = seed
    config.data.source, config.data.task = "task", task
    config.data.task_args.min_len, config.data.task_args.max_len = least, greatest
    config.train.update(
        log_every=max(1, STEPS.value // 10), eval_every=STEPS.value, eval_batches=2, checkpoint_every=STEPS.value
    )
    return config


def _tokens(task: str, length: int) -> int:
    """The most tokens an example of `task` of `length` takes."""
    from hybridlm.tasks import make_task

    return make_task(task, seq_len=1 << 30, min_len=length, max_len=length).max_tokens(length)


def run_cell(task: str, arch: str, seed: int, out: pathlib.Path) -> dict[str, Any]:
    """Trains and scores one cell; returns its results line."""
    import jax
    import numpy as np
    from flax import nnx

    from hybridlm.model import count_params
    from hybridlm.tasks import accuracy_by_length, make_task
    from hybridlm.trainer import Trainer

    edges = _ints(TEST_LENGTHS)
    seq_len = -(-_tokens(task, max(edges[-1], _ints(TRAIN_LENGTHS)[1])) // 16) * 16
    trainer = Trainer(cell_config(task, arch, seed, seq_len), out / "runs" / task / arch / f"seed{seed}")
    metrics = trainer.train()
    params = trainer.initial_state()["params"]  # the checkpoint the run ended with
    model = nnx.merge(trainer.program.graphdef, params)
    test = make_task(task, seq_len=seq_len, min_len=1, max_len=edges[-1], seed=10_000 + seed)
    examples = {k: np.stack([test[i][k] for i in range(EVAL_EXAMPLES.value)]) for k in test[0]}
    predict = jax.jit(lambda tokens: model(tokens).argmax(-1))
    starts = range(0, EVAL_EXAMPLES.value, BATCH.value)
    predictions = np.concatenate([np.asarray(predict(examples["inputs"][i : i + BATCH.value])) for i in starts])
    scores = accuracy_by_length(predictions, examples, edges)
    return {
        "task": task,
        "arch": arch,
        "seed": seed,
        "params": count_params(trainer.model_config),
        "steps": STEPS.value,
        "final_loss": metrics.get("loss"),
        "accuracy": {str(bucket): score.token for bucket, score in scores.items()},
        "sequence_accuracy": {str(bucket): score.sequence for bucket, score in scores.items()},
    }


def read_results(path: pathlib.Path) -> list[dict[str, Any]]:
    """The results lines written so far."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_report(task: str, results: list[dict[str, Any]], archs: list[str], out: pathlib.Path) -> None:
    """out/TASK.md (token accuracy, mean +- std over seeds, per architecture and bucket) and out/TASK.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {a: [r for r in results if r["task"] == task and r["arch"] == a] for a in archs}
    buckets = sorted({int(b) for rs in rows.values() for r in rs for b in r["accuracy"]})
    lines = [
        f"# {task}: exact-match accuracy on answer tokens by test length (mean +- std over seeds)",
        "",
        "| architecture | params | seeds | " + " | ".join(f"<= {b}" for b in buckets) + " |",
        "|---|---|---|" + "---|" * len(buckets),
    ]
    figure, axes = plt.subplots(figsize=(6, 4))
    for arch, runs in rows.items():
        if not runs:
            continue
        scores = np.array([[r["accuracy"].get(str(b), np.nan) for b in buckets] for r in runs])
        mean, std = np.nanmean(scores, axis=0), np.nanstd(scores, axis=0)
        cells = " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(mean, std))
        lines.append(f"| {arch} | {runs[0]['params']:,} | {len(runs)} | {cells} |")
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


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    from hybridlm.tasks import TASKS

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
    seeds, train_lengths, edges = _ints(SEEDS), _ints(TRAIN_LENGTHS), _ints(TEST_LENGTHS)
    if len(train_lengths) != 2 or not 1 <= train_lengths[0] <= train_lengths[1]:
        _fail(f"--train_lengths={','.join(TRAIN_LENGTHS.value)}: give the least and greatest length, e.g. 3,40")
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 1:
        _fail(f"--test_lengths={','.join(TEST_LENGTHS.value)}: give ascending lengths, e.g. 40,64,128,256")
    out = pathlib.Path(OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {(r["task"], r["arch"], r["seed"]) for r in read_results(path)}
    for task in tasks:
        for arch in archs:
            for seed in seeds:
                if (task, arch, seed) in done:
                    print(f"{task} {arch} seed {seed}: done, skipped", flush=True)
                    continue
                print(f"{task} {arch} seed {seed}: training", flush=True)
                try:
                    line = run_cell(task, arch, seed, out)
                except ValueError as e:  # ConfigError and data errors, before anything trains
                    _fail(str(e))
                with path.open("a") as f:
                    f.write(json.dumps(line) + "\n")
        write_report(task, read_results(path), archs, out)
        print(f"{task}: {out / f'{task}.md'}, {out / f'{task}.png'}", flush=True)


if __name__ == "__main__":
    app.run(main)
