"""Pallas and reference kernels for hybridlm."""

from pallas_kernels.gdn import gated_delta_rule

__all__ = ["gated_delta_rule"]
