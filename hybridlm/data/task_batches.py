"""Batches of a synthetic task's examples (hybridlm.tasks), for training on a per-token loss mask.

Batch `step` holds examples [step * batch_size, (step + 1) * batch_size) of the task, so ``ds[step]`` is a pure
function of the task and `step`, as for token streams (hybridlm.data.batches): a resumed run reads the same batches.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from ml_collections import config_dict

from hybridlm.tasks import TASKS, Task, make_task

ENTROPY_SAMPLE_EXAMPLES = 1024  # the answer-token entropy is measured on this many leading examples


def task_splits(config: config_dict.ConfigDict) -> tuple[Task, Task]:
    """The training and held-out examples of `config.data.task` built with `config.data.task_args`, seq_len
    `config.data.seq_len` and seed `config.seed`; the held-out ones are the same task with a seed mixed from it.

    Raises:
      ValueError: naming the key to fix, for an unknown task, arguments the task refuses, or a task vocabulary larger
        than `config.model.vocab_size`.
    """
    data = config.data
    if data.task not in TASKS:
        raise ValueError(f"config.data.task={data.task!r} is not a task; set it to one of {sorted(TASKS)}")
    args = dict(data.task_args)
    try:
        train = make_task(data.task, seq_len=data.seq_len, seed=config.seed, **args)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"config.data.task_args={args} does not build the task {data.task!r} (seq_len={data.seq_len}): {e}; "
            "fix config.data.task_args or config.data.seq_len"
        ) from None
    if train.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={config.model.vocab_size} is below the {train.vocab_size} token ids of the task "
            f"{data.task!r}; raise config.model.vocab_size to at least {train.vocab_size}"
        )
    heldout_seed = int(np.random.SeedSequence((config.seed, 1)).generate_state(1, dtype=np.uint32)[0])
    return train, dataclasses.replace(train, seed=heldout_seed)


class _ReadExamples:
    """Batch index -> this process's rows of it: dict of [rows, seq_len] arrays, int32 inputs, targets and
    segment_ids (all 0: one example per row) and float32 loss_mask."""

    def __init__(self, task: Task, batch_size: int, process_index: int, process_count: int):
        self._task = task
        self._batch_size = batch_size
        self._rows = batch_size // process_count
        self._start = process_index * self._rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = step * self._batch_size + self._start
        examples = [self._task[i] for i in range(first, first + self._rows)]
        batch = {key: np.stack([e[key] for e in examples]) for key in ("inputs", "targets", "loss_mask")}
        return {**batch, "segment_ids": np.zeros_like(batch["inputs"])}


def make_task_dataset(
    task: Task, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """A grain MapDataset whose element `step` is this process's rows of batch `step` of `task` (see `_ReadExamples`);
    process `p` gets rows [p * n, (p + 1) * n), n = batch_size // process_count."""
    if batch_size < 1 or batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(
            f"config.data.batch_size={batch_size} cannot be split into process {process_index} of {process_count}; "
            "make it a positive multiple of the process count"
        )
    return grain.MapDataset.range(len(task) // batch_size).map(
        _ReadExamples(task, batch_size, process_index, process_count)
    )


def answer_entropy(task: Task, count: int = ENTROPY_SAMPLE_EXAMPLES) -> float:
    """Entropy in nats of the target tokens at the answer positions of the task's first `count` examples: the loss
    of a model that ignores context."""
    examples = [task[i] for i in range(min(count, len(task)))]
    answers = np.concatenate([e["targets"][e["loss_mask"] != 0] for e in examples])
    probs = np.bincount(answers, minlength=task.vocab_size) / max(answers.size, 1)
    probs = probs[probs > 0]
    return float(-np.sum(probs * np.log(probs)))
