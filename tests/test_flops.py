"""FLOPs per token and peak FLOP/s: the counts against a hand count of the small config's layers and against XLA's
cost analysis of the compiled step."""

import types

import pytest

from conftest import load_tool, small_config
from hybridlm import flops, config_checks
from hybridlm.model import ModelConfig
from hybridlm.trainer import TrainProgram

train_setup = load_tool("train_setup")


def test_flops_per_token_counts_every_projection_and_mixer():
    """small_config: d 32, one GDN layer (2 key heads of 8, 4 value heads of 12) and one full attention layer (4 query,
    2 kv heads of 8), MLP 64, vocab 320, chunks of 8; counted by hand from the layer shapes."""
    config = ModelConfig.from_config(small_config(("gdn", "attn")).model)
    d, vocab, mlp = 32, 320, 64
    gdn_projections = d * (2 * 16 + 2 * 48 + 2 * 4) + 48 * d  # q, k; v, gate; a, b; out
    attention_projections = d * (32 + 2 * 16) + 32 * d  # q; k, v; out
    matmul = gdn_projections + attention_projections + 2 * 3 * d * mlp + d * vocab
    assert flops.matmul_params(config) == matmul
    chunk, key, value = 8, 8, 12
    gdn = 3 * 4 * (6 * chunk * key + 4 * chunk * value + 6 * key * value + chunk**2 / 3)
    for seq_len in (16, 100):
        attention = 12 * 4 * 8 * seq_len
        assert flops.flops_per_token(config, seq_len) == pytest.approx(6 * matmul + attention + gdn, rel=1e-12)


def test_sliding_windows_count_only_the_keys_they_see():
    config = ModelConfig.from_config(small_config(("swa", "attn")).model)  # window 8
    short, long = flops.flops_per_token(config, 8), flops.flops_per_token(config, 100)
    assert long - short == pytest.approx(12 * 4 * 8 * (100 - 8))  # only the full-attention layer grows


@pytest.mark.parametrize(
    "kind, peak",
    [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
     ("cpu", None)],
)
def test_peak_flops_by_longest_device_kind_prefix(kind, peak):
    assert flops.peak_flops(types.SimpleNamespace(device_kind=kind)) == peak


def test_flops_per_token_agrees_with_xla_cost_analysis_of_the_step():
    """XLA's count of the compiled train step (CPU: attention and GDN in jnp, no remat, one layer group, so nothing
    hides in a loop) is within 3% of flops_per_token x tokens: its extras (element-wise work, the optimizer) are
    small at width 256, and what PaLM's convention leaves out is counted the same way by both."""
    config = small_config(("gdn", "attn"))
    model = config.model
    model.d_model, model.num_heads, model.num_kv_heads, model.mlp_hidden = 256, 4, 4, 768
    model.gdn.num_key_heads = model.gdn.num_value_heads = 4
    model.gdn.key_head_dim, model.gdn.value_head_dim, model.gdn.chunk_size = 32, 64, 16
    config.data.seq_len = model.max_seq_len = 256
    program = TrainProgram(config, config_checks.validate(config))
    batch = program.put_batch(train_setup.synthetic_batch(config))
    cost = program.train_step.lower(program.abstract_state(), batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    counted = flops.flops_per_token(config_checks.validate(config), 256) * program.tokens_per_step
    assert cost["flops"] == pytest.approx(counted, rel=0.03)
