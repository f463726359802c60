"""Recipes the experiments share (experiments/ imports them; the library does not): the vocabulary sizes, the Olmo 3 /
Olmo Hybrid pretraining stage at a given size, and the tiny debug models."""

from __future__ import annotations

from ml_collections import config_dict

from hybridlm.config_defaults import default_run_config, gdn_config, model_config

OLMO_VOCAB = 100_352  # dolma2 tokenizer, 100,278 tokens padded to a multiple of 128
BYTE_VOCAB = 320  # the built-in byte tokenizer's 258 ids, padded to a multiple of 64


def olmo_pretraining(model: config_dict.ConfigDict, description: str, lr: float) -> config_dict.ConfigDict:
    """The Olmo Hybrid pretraining stage, as OLMo-core's src/scripts/official/OLMo-hybrid/OLMo-hybrid-7B-pretrain.py
    runs it: 8192-token sequences, 512 per batch (4M tokens), AdamW at `lr` (betas 0.9, 0.95, weight decay 0.1 off
    the embeddings, z-loss 1e-5, clipping at 1.0), CosWithWarmup: 2000 warmup steps, then cosine decay to lr / 10 at
    the end of one epoch of its data, step 1,414,078 (~5.93T tokens; OLMo-hybrid-0326-7B.csv's last stage-1 step).
    Documents are packed without masking between them, as in the official stage-1 runs (they mask only in
    long-context and SFT stages)."""
    config = default_run_config(
        model, description=description, seq_len=8192, batch_size=512, lr=lr, warmup_steps=2000, num_steps=1_414_078
    )
    config.data.document_mask = False
    return config


def olmo_7b(model: config_dict.ConfigDict, description: str) -> config_dict.ConfigDict:
    """The 7B pretraining stage at lr 3e-4, its parameters and optimizer state split over every device (FSDP): on one
    device they take 89 GB, too much to replicate on each."""
    config = olmo_pretraining(model, description, lr=3e-4)
    config.mesh.update(data=1, fsdp=-1)
    return config


def olmo_1b(layer_pattern: tuple[str, ...], description: str) -> config_dict.ConfigDict:
    """A 1B-scale model with the 7B's ratios (d_model 2048, 16 layers, 16 heads of 128, GDN 16 heads of 96/192, MLP
    5888 = 11008 x 2048 / 3840 rounded to a multiple of 128) on the dolma2 vocabulary, pretraining recipe at lr 4e-4.
    It keeps matmul and kernel outputs for the backward and runs its 4 layer groups unrolled: that fits at batch 8 x
    8192 tokens per H200 (BENCHMARKS.md)."""
    model = model_config(
        vocab_size=OLMO_VOCAB,
        d_model=2048,
        num_layers=16,
        layer_pattern=layer_pattern,
        num_heads=16,
        mlp_hidden=5888,
        max_seq_len=8192,
    )
    model.remat = "dots_and_kernels"
    model.scan_layers = False
    return olmo_pretraining(model, description, lr=4e-4)


def tiny_config(layer_pattern: tuple[str, ...], description: str) -> config_dict.ConfigDict:
    """4 layers of width 128 over the byte-level built-in corpus; float32 compute and GDN chunks of 16 (fast on CPUs)."""
    model = model_config(
        vocab_size=BYTE_VOCAB,
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
