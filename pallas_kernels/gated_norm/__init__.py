"""The Gated DeltaNet layer's output norm, weight * RMSNorm(x) * SiLU(gate), by XLA or as Pallas GPU kernels."""

from pallas_kernels.gated_norm.ops import BACKENDS, gated_rms_norm

GATED_NORM_IMPLS = ("auto", *BACKENDS)

__all__ = ["GATED_NORM_IMPLS", "gated_rms_norm"]
