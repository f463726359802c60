"""Tiny pure Gated DeltaNet model (every layer GDN) for CPU debugging."""

from experiments import _tiny


def get_config():
    return _tiny.tiny_config(("gdn",), __doc__.strip())
