"""Exact-match accuracy of predicted tokens at the answer positions of task examples, overall and by length."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Attributes:
    token: the fraction of answer positions whose prediction is the target.
    sequence: the fraction of examples whose every answer position is predicted right.
    examples: the number of examples scored.
    answers: the number of answer positions scored.
    """

    token: float
    sequence: float
    examples: int
    answers: int


def accuracy(predictions: np.ndarray, examples: Mapping[str, np.ndarray]) -> Accuracy:
    """The accuracy of `predictions`, int [N, seq_len] (e.g. the argmax of the logits), on a batch of N examples
    (`targets` int [N, seq_len], `loss_mask` [N, seq_len], nonzero at the answer positions, of which there must be
    some). Predictions elsewhere are ignored."""
    targets, answers = examples["targets"], np.asarray(examples["loss_mask"]) != 0
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ in shape")
    if not answers.any():
        raise ValueError("the examples have no answer positions to score")
    right = np.sum((predictions == targets) & answers, axis=1)
    total = np.sum(answers, axis=1)
    return Accuracy(
        token=float(right.sum() / total.sum()),
        sequence=float(np.mean(right == total)),
        examples=len(total),
        answers=int(total.sum()),
    )


def length_buckets(lengths: np.ndarray, edges: Sequence[int] | None = None) -> np.ndarray:
    """int [N] lengths (>= 1) -> int [N], each length's bucket named by the greatest length it holds: the least
    power of two >= the length when `edges` is None (buckets 1, 2, 3-4, 5-8, ...), else the least of the ascending
    `edges` >= the length (a length above the last edge is an error)."""
    lengths = np.asarray(lengths)
    if np.any(lengths < 1):
        raise ValueError(f"lengths must be >= 1, got {lengths.min()}")
    if edges is None:
        return np.array([1 << (int(n) - 1).bit_length() for n in lengths], dtype=np.int64).reshape(lengths.shape)
    edges = np.asarray(edges)
    if np.any(np.diff(edges) <= 0) or lengths.max(initial=0) > edges[-1]:
        raise ValueError(f"edges must ascend strictly and reach the longest length {lengths.max()}, got {edges}")
    return edges[np.searchsorted(edges, lengths)]


def accuracy_by_length(
    predictions: np.ndarray, examples: Mapping[str, np.ndarray], edges: Sequence[int] | None = None
) -> dict[int, Accuracy]:
    """`accuracy` of each length bucket (`length_buckets` of `examples["length"]` [N] with `edges`) that holds
    examples, by bucket."""
    buckets = length_buckets(examples["length"], edges)
    return {
        int(bucket): accuracy(
            predictions[buckets == bucket],
            {name: np.asarray(examples[name])[buckets == bucket] for name in ("targets", "loss_mask")},
        )
        for bucket in np.unique(buckets)
    }
