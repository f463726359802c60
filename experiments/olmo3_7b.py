"""Olmo 3 7B: the transformer baseline (3 sliding-window layers then 1 full-attention layer), pretraining recipe."""

from experiments import _base
from hybridlm.config_defaults import gdn_config, model_config


def get_config():
    model = model_config(
        vocab_size=_base.OLMO_VOCAB,
        d_model=4096,
        num_layers=32,
        layer_pattern=("swa", "swa", "swa", "attn"),
        num_heads=32,
        mlp_hidden=11008,
        max_seq_len=8192,
        gdn=gdn_config(num_heads=32, key_head_dim=96, value_head_dim=192),
    )
    return _base.olmo_pretraining(model, __doc__.strip(), lr=3e-4)
