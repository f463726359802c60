"""Tiny Olmo-Hybrid-style model (3 GDN layers, 1 attention layer) for CPU debugging."""

from experiments import _tiny


def get_config():
    return _tiny.tiny_config(("gdn", "gdn", "gdn", "attn"), __doc__.strip())
