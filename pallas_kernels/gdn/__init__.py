"""Gated DeltaNet (gated delta rule) operators."""

from pallas_kernels.gdn.chunked import chunked_gated_delta_rule
from pallas_kernels.gdn.naive import gated_delta_rule_step, naive_gated_delta_rule
from pallas_kernels.gdn.ops import gated_delta_rule

__all__ = ["chunked_gated_delta_rule", "gated_delta_rule", "gated_delta_rule_step", "naive_gated_delta_rule"]
