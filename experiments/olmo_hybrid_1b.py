"""Olmo Hybrid at 1B scale: d_model 2048, 16 layers [gdn, gdn, gdn, attn] x 4, the 7B's head and width ratios."""

from hybridlm import recipes


def get_config():
    return recipes.olmo_1b(("gdn", "gdn", "gdn", "attn"), __doc__.strip())
