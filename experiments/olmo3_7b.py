"""Olmo 3 7B: the transformer baseline (3 sliding-window layers then 1 full-attention layer), stage-1 pretraining
as OLMo-core's src/scripts/official/OLMo3/OLMo-3-1025-7B-pretrain-1.py and -2.py ran it."""

from hybridlm import recipes
from hybridlm.config_defaults import model_config


def get_config():
    model = model_config(
        vocab_size=recipes.OLMO_VOCAB,
        d_model=4096,
        num_layers=32,
        layer_pattern=("swa", "swa", "swa", "attn"),
        num_heads=32,
        mlp_hidden=11008,
        max_seq_len=8192,
    )
    config = recipes.olmo_7b(model, __doc__.strip())
    # OLMo-core's src/scripts/official/OLMo3/OLMo-3-1025-7B-pretrain-1.py ran CosWithWarmup (warmup 2000, to lr / 10)
    # planned over 5T tokens (1,192,093 steps) up to its midpoint, step 597,046; OLMo-3-1025-7B-pretrain-2.py went on
    # with HalfCosWithWarmup: the second half of that cosine, stretched to reach lr / 10 at 7T tokens (step 1,668,931).
    # It stopped at the end of one epoch of its data, step 1,413,814 (~5.93T tokens, lr ~3.9e-5; the last stage-1
    # step of OLMo-3-1025-7B.csv). Left out: resuming from step 596,047, part 2 ramped linearly up to the midpoint's lr
    # over its first 1,000 steps, at most 0.4% below this schedule.
    config.optim.update(schedule="split_cosine", midpoint_step=597_046, schedule_steps=1_668_931)
    config.train.num_steps = 1_413_814
    return config
