"""The tiny debug models: a few layers that train on the built-in data on a laptop CPU in minutes."""

from __future__ import annotations

from ml_collections import config_dict

from experiments import _base
from hybridlm.config_defaults import gdn_config, model_config, default_run_config


def tiny_config(layer_pattern: tuple[str, ...], description: str) -> config_dict.ConfigDict:
    """4 layers of width 128 over the byte-level built-in corpus; float32 compute and GDN chunks of 16 (fast on CPUs)."""
    model = model_config(
        vocab_size=_base.BYTE_VOCAB,
        d_model=128,
        num_layers=4,
        layer_pattern=layer_pattern,
        num_heads=4,
        mlp_hidden=384,
        max_seq_len=1024,
        gdn=gdn_config(key_head_dim=32),
    )
    model.dtype = "float32"
    model.sliding_window = 128
    model.remat = "none"
    model.gdn.chunk_size = 16
    config = default_run_config(
        model, description=description, seq_len=128, batch_size=8, lr=3e-3, warmup_steps=50, num_steps=500
    )
    config.data.max_bytes = 4_000_000
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    return config
