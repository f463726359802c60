"""The Gated DeltaNet layer's short convolution: SiLU of a depthwise causal convolution, optionally L2-normalised per
head, by XLA or with a Pallas GPU backward."""

from pallas_kernels.short_conv.ops import BACKENDS, short_conv
from pallas_kernels.short_conv.reference import L2_EPS, l2_normalize_heads

SHORT_CONV_IMPLS = ("auto", *BACKENDS)

__all__ = ["L2_EPS", "SHORT_CONV_IMPLS", "l2_normalize_heads", "short_conv"]
