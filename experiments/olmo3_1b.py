"""Olmo 3 at 1B scale: d_model 2048, 16 layers [swa, swa, swa, attn] x 4, window 4096; the hybrid 1B's baseline."""

from experiments import _base


def get_config():
    model = _base.model_config(
        vocab_size=_base.OLMO_VOCAB,
        d_model=2048,
        num_layers=16,
        layer_pattern=("swa", "swa", "swa", "attn"),
        num_heads=16,
        mlp_hidden=5888,
        max_seq_len=8192,
        gdn=_base.gdn_config(num_heads=16, key_head_dim=96, value_head_dim=192),
    )
    return _base.olmo_pretraining(model, __doc__.strip(), lr=4e-4)
