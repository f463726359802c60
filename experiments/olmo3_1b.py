"""Olmo 3 at 1B scale: d_model 2048, 16 layers [swa, swa, swa, attn] x 4, window 4096; the hybrid 1B's baseline."""

from hybridlm import recipes


def get_config():
    return recipes.olmo_1b(("swa", "swa", "swa", "attn"), __doc__.strip())
