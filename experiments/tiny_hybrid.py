"""Tiny Olmo-Hybrid-style model (3 GDN layers, 1 attention layer) for CPU debugging."""

from hybridlm import recipes


def get_config():
    return recipes.tiny_config(("gdn", "gdn", "gdn", "attn"), __doc__.strip())
