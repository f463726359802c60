"""Tiny Olmo-3-style transformer (3 sliding-window layers, 1 full-attention layer) for CPU debugging."""

from hybridlm import recipes


def get_config():
    return recipes.tiny_config(("swa", "swa", "swa", "attn"), __doc__.strip())
