"""Pallas and reference kernels for hybridlm."""

from pallas_kernels.attention import attention
from pallas_kernels.gated_norm import gated_rms_norm
from pallas_kernels.gdn import gated_delta_rule, gated_delta_rule_step
from pallas_kernels.platform import target_platform
from pallas_kernels.short_conv import short_conv

__all__ = ["attention", "gated_delta_rule", "gated_delta_rule_step", "gated_rms_norm", "short_conv", "target_platform"]
