"""Results of the training runs of a scaling ladder: one JSON object a line with at least arch, params
(non-embedding parameters N), tokens (training tokens D), flops (training FLOPs) and loss (final held-out loss)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

_NUMBERS = ("params", "tokens", "flops", "loss")


@dataclasses.dataclass(frozen=True)
class Record:
    """One finished run: its architecture, non-embedding parameters, training tokens and FLOPs, final loss."""

    arch: str
    params: float
    tokens: float
    flops: float
    loss: float


def read_records(path: str | pathlib.Path) -> list[Record]:
    """The records of a JSONL file (blank lines skipped, other keys ignored); ValueError naming the line for a
    missing key or a number that is not finite and positive."""
    records = []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [key for key in ("arch", *_NUMBERS) if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing {', '.join(missing)}")
        values = {key: float(row[key]) for key in _NUMBERS}
        bad = [key for key, value in values.items() if not (math.isfinite(value) and value > 0)]
        if bad:
            raise ValueError(f"{path}:{number}: {', '.join(bad)} must be finite and positive")
        records.append(Record(arch=str(row["arch"]), **values))
    return records


def group_by_arch(records: Iterable[Record]) -> dict[str, list[Record]]:
    """The records of each architecture, architectures in sorted order."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.arch, []).append(record)
    return dict(sorted(groups.items()))


def flops_per_param_token(records: Sequence[Record]) -> float:
    """k in C = k N D: the median over `records` of flops / (params tokens); 6 for a dense model with no
    attention-score term, more where attention or recurrent state updates add FLOPs per token."""
    return float(np.median([r.flops / (r.params * r.tokens) for r in records]))
