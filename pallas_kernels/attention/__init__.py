"""Causal attention operators: XLA reference, cuDNN, Pallas GPU flash attention, Pallas TPU splash attention."""

from pallas_kernels.attention.ops import IMPLEMENTATIONS, attention

ATTENTION_IMPLS = ("auto", *IMPLEMENTATIONS)

__all__ = ["ATTENTION_IMPLS", "attention"]
