"""Olmo Hybrid 7B: Olmo 3 7B with its sliding-window layers replaced by Gated DeltaNet and two heads fewer, pretrained
as OLMo-core's src/scripts/official/OLMo-hybrid/OLMo-hybrid-7B-pretrain.py does (GDN blocks pre-norm, as released)."""

from hybridlm import recipes
from hybridlm.config_defaults import model_config


def get_config():
    model = model_config(
        vocab_size=recipes.OLMO_VOCAB,
        d_model=3840,
        num_layers=32,
        layer_pattern=("gdn", "gdn", "gdn", "attn"),
        num_heads=30,
        mlp_hidden=11008,
        max_seq_len=8192,
    )
    # Pre-norm GDN blocks, as in the released checkpoint and transformers' OlmoHybrid (so runs export to Hugging Face);
    # OLMo-hybrid-7B-pretrain.py builds them like its attention blocks, norms on the outputs: gdn_norm="post".
    model.gdn_norm = "pre"
    return recipes.olmo_7b(model, __doc__.strip())
