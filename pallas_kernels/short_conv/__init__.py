"""The Gated DeltaNet layer's short convolution: SiLU of a depthwise causal convolution, by XLA or with a Pallas GPU
backward."""

from pallas_kernels.short_conv.ops import BACKENDS, short_conv

SHORT_CONV_IMPLS = ("auto", *BACKENDS)

__all__ = ["SHORT_CONV_IMPLS", "short_conv"]
