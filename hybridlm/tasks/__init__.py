"""Synthetic tasks of the expressivity suite, by name in `TASKS`, and their scoring.

- `parity`: running parity of a bit string.
- `modular`, `modular_brackets`: running value mod 5 of a sum of digits, or of an expression with + - * and brackets.
- `s5`: running product of permutations of 5 elements.
- `mqar`: multi-query associative recall (Zoology).
- `code`: the final values of variables after a straight-line program of constants, copies and swaps.

Each is a seeded random-access source of padded examples (`hybridlm.tasks.task`), usable as a grain
`RandomAccessDataSource`: `grain.MapDataset.source(make_task("parity", seq_len=64, min_len=3, max_len=40))`.
`LENGTHS[name]` holds the training and test lengths the expressivity suite (tools/expressivity.py) uses by default.
"""

from hybridlm.tasks import modular, mqar, parity, programs, s5  # noqa: F401 (each registers its tasks)
from hybridlm.tasks.evaluation import Accuracy, accuracy, accuracy_by_length, length_buckets
from hybridlm.tasks.registry import LENGTHS, TASKS, Lengths, make_task, register
from hybridlm.tasks.task import PAD, Task

__all__ = [
    "LENGTHS",
    "PAD",
    "TASKS",
    "Accuracy",
    "Lengths",
    "Task",
    "accuracy",
    "accuracy_by_length",
    "length_buckets",
    "make_task",
    "register",
]
