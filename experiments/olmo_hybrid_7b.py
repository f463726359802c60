"""Olmo Hybrid 7B: Olmo 3 7B with its sliding-window layers replaced by Gated DeltaNet, pretraining recipe."""

from experiments import _base
from hybridlm.config_defaults import gdn_config, model_config


def get_config():
    model = model_config(
        vocab_size=_base.OLMO_VOCAB,
        d_model=3840,
        num_layers=32,
        layer_pattern=("gdn", "gdn", "gdn", "attn"),
        num_heads=30,
        mlp_hidden=11008,
        max_seq_len=8192,
        gdn=gdn_config(num_heads=30, key_head_dim=96, value_head_dim=192),
    )
    return _base.olmo_pretraining(model, __doc__.strip(), lr=3e-4)
