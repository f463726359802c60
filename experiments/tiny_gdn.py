"""Tiny pure Gated DeltaNet model (every layer GDN) for CPU debugging."""

from hybridlm import recipes


def get_config():
    return recipes.tiny_config(("gdn",), __doc__.strip())
