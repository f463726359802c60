"""Causal attention operators: XLA reference, cuDNN, Pallas GPU flash attention, Pallas TPU splash attention."""

from pallas_kernels.attention.ops import BACKENDS, attention

ATTENTION_IMPLS = ("auto", *BACKENDS)

__all__ = ["ATTENTION_IMPLS", "attention"]
