"""The hybrid model: causality, document masking, the scanned stack, parameter counts, dtypes, GDN init, the blocks'
norm placements and the table of block kinds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import experiments
from conftest import small_config
from hybridlm.model import ConfigError, HybridLM, ModelConfig, abstract_model, count_params
from hybridlm.model.config import BLOCK_KINDS

PATTERNS = {"hybrid": ("gdn", "attn"), "transformer": ("swa", "attn"), "pure_gdn": ("gdn", "gdn")}


def _model(pattern, **overrides) -> HybridLM:
    config = small_config(pattern).model
    config.update(overrides)
    return HybridLM(ModelConfig.from_config(config), nnx.Rngs(0))


def _tokens(key, shape, vocab=258):
    return jax.random.randint(jax.random.key(key), shape, 0, vocab)


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("name", PATTERNS)
def test_causal_and_documents_independent(name):
    """Changing token t changes no logit before t; a packed row equals its documents run alone."""
    model = _model(PATTERNS[name])
    forward = jax.jit(lambda tokens, segments: model(tokens, segment_ids=segments))
    length, cut, t = 40, 17, 25
    tokens = _tokens(1, (1, length))
    changed = tokens.at[0, t].set((tokens[0, t] + 1) % 258)
    segments = jnp.zeros_like(tokens)
    base, after = forward(tokens, segments), forward(changed, segments)
    np.testing.assert_array_equal(base[:, :t], after[:, :t])
    assert float(jnp.abs(base[:, t:] - after[:, t:]).max()) > 1e-4

    packed_segments = (jnp.arange(length) >= cut).astype(jnp.int32)[None]
    packed = forward(tokens, packed_segments)
    first = forward(tokens[:, :cut], jnp.zeros((1, cut), jnp.int32))
    second = forward(tokens[:, cut:], jnp.zeros((1, length - cut), jnp.int32))
    assert _rel_err(packed[:, :cut], first) < 1e-5
    assert _rel_err(packed[:, cut:], second) < 1e-5  # RoPE is relative, so the offset does not matter


def test_sliding_window_limits_reach():
    """In a sliding-window-only model a token beyond the reach of all windows changes nothing."""
    model = _model(("swa", "swa"), sliding_window=4)
    tokens = _tokens(2, (1, 24))
    changed = tokens.at[0, 5].set((tokens[0, 5] + 1) % 258)
    base, after = model(tokens), model(changed)
    reach = 5 + 2 * (4 - 1)  # two layers, each sees 3 tokens back
    np.testing.assert_array_equal(base[:, reach + 1 :], after[:, reach + 1 :])
    assert float(jnp.abs(base[:, reach] - after[:, reach]).max()) > 1e-5


def test_stack_is_scanned():
    """The traced program does not grow with depth: layer groups run under one scan."""
    tokens = _tokens(3, (1, 16))

    def num_equations(num_layers):
        config = small_config(("gdn", "attn")).model
        config.num_layers = num_layers
        model = abstract_model(ModelConfig.from_config(config))
        graphdef, state = nnx.split(model)
        return len(jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens).eqns)

    assert num_equations(2) == num_equations(8)


def test_unrolled_stack_leaves_no_loop_and_computes_the_same():
    """scan_layers=False runs the layer groups without a loop (no while in the compiled program of an attention-only
    stack, whose layers have no loops of their own) and gives the scanned stack's loss and gradients."""
    tokens = _tokens(4, (2, 24))

    def loss_and_grads(scan_layers):
        model = _model(PATTERNS["transformer"], num_layers=6, dtype="float32", scan_layers=scan_layers)
        graphdef, params = nnx.split(model)
        step = jax.jit(jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)))
        loops = step.lower(params).compile().as_text().count(" while(")
        return step(params), loops

    (scanned_loss, scanned_grads), scanned_loops = loss_and_grads(True)
    (unrolled_loss, unrolled_grads), unrolled_loops = loss_and_grads(False)
    assert scanned_loops > 0 and unrolled_loops == 0
    assert abs(float(unrolled_loss) / float(scanned_loss) - 1) < 1e-6
    for got, want in zip(jax.tree.leaves(unrolled_grads), jax.tree.leaves(scanned_grads)):
        assert _rel_err(got, want) < 1e-5


def _hand_count(model) -> int:
    """Parameters of a config.model, layer by layer from the architecture (independent of the modules)."""
    d, vocab, mlp, gdn = model.d_model, model.vocab_size, model.mlp_hidden, model.gdn
    head_dim = model.head_dim or d // model.num_heads
    q_width, kv_width = model.num_heads * head_dim, model.num_kv_heads * head_dim
    key_width, value_width = gdn.num_key_heads * gdn.key_head_dim, gdn.num_value_heads * gdn.value_head_dim
    mlp_block = 3 * d * mlp + 2 * d  # SwiGLU and the block's two norms
    attention = 2 * d * q_width + 2 * d * kv_width + q_width + kv_width  # q, o, k, v and the QK norms
    gdn_layer = (
        2 * d * key_width + 3 * d * value_width  # q, k; v, g, o
        + 2 * d * gdn.num_value_heads  # a, b
        + gdn.conv_kernel * (2 * key_width + value_width)  # the short convolutions
        + 2 * gdn.num_value_heads + gdn.value_head_dim  # A_log, dt_bias, the output norm
    )
    pattern = model.layer_pattern * (model.num_layers // len(model.layer_pattern))
    layers = sum(mlp_block + (gdn_layer if kind == "gdn" else attention) for kind in pattern)
    return 2 * vocab * d + d + layers  # embedding, LM head, final norm


@pytest.mark.parametrize("name, published", [("olmo_hybrid_7b", 7.43e9), ("olmo3_7b", 7.30e9)])
def test_7b_parameter_counts(name, published):
    """Exactly the hand count of the architecture, which is the published size to 0.5%."""
    model = experiments.get_config(name).model
    count = count_params(ModelConfig.from_config(model))
    assert count == _hand_count(model)
    assert abs(count - published) / published < 0.005, count


def test_bf16_compute_tracks_fp32():
    """Parameters stay fp32 while matmuls run in bf16; logits stay close to the fp32 model's."""
    fp32, bf16 = _model(PATTERNS["hybrid"]), _model(PATTERNS["hybrid"], dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    tokens = _tokens(4, (2, 24))
    logits = bf16(tokens)
    assert logits.dtype == jnp.float32
    assert _rel_err(logits, fp32(tokens)) < 5e-2


def test_gdn_gate_init_ranges():
    """A = exp(A_log) in (0, 16); softplus(dt_bias) = dt in [1e-4, 1e-1] (log-uniform from 1e-3, floored)."""
    config = small_config(("gdn", "gdn")).model
    config.gdn.num_key_heads, config.gdn.num_value_heads = 64, 64
    model = HybridLM(ModelConfig.from_config(config), nnx.Rngs(5))
    gdn = model.groups.blocks[0].gdn
    a = jnp.exp(gdn.A_log[...])  # [num_groups = 1, heads]
    dt = jax.nn.softplus(gdn.dt_bias[...])
    assert a.shape == (1, 64) and float(a.min()) > 0 and float(a.max()) < 16 and float(a.max()) > 8
    assert float(dt.min()) >= 1e-4 * 0.999 and float(dt.max()) <= 0.1 * 1.001 and float(dt.min()) < 1e-2


def test_dots_and_kernels_keeps_the_kernels_outputs_for_the_backward(capsys):
    """Under `dots_and_kernels` a rematerialised block keeps what its Pallas kernels produced (the GDN forward's
    residuals), so the backward does not rerun them; under `dots` it keeps only its inputs and matmul outputs."""
    from jax.ad_checkpoint import print_saved_residuals

    from hybridlm.model.config import REMAT_POLICIES
    from pallas_kernels.gdn import gpu

    rng = np.random.default_rng(0)
    q, v = (jnp.asarray(rng.normal(size=(1, 32, 2, 16)), jnp.float32) for _ in range(2))
    gates, resets = jnp.full((1, 32, 2), -0.1), jnp.zeros((1, 32), bool)

    def block(q, v):
        o, _ = gpu.pallas_gpu_gated_delta_rule(
            jnp.sin(q), q, v, gates, gates + 0.6, jnp.zeros((1, 2, 16, 16)), resets, 0.25, 16, interpret=True
        )
        return jnp.sum(o)

    def kernel_outputs(policy: str) -> int:
        print_saved_residuals(jax.checkpoint(block, policy=REMAT_POLICIES[policy]), q, v)  # one line per residual
        return sum("pallas_gpu_gated_delta_rule" in line for line in capsys.readouterr().out.splitlines())

    assert kernel_outputs("dots_and_kernels") > 0
    assert kernel_outputs("dots") == 0


def test_parameter_count_of_a_gqa_model_with_fewer_gdn_key_heads():
    """The small config has 2 key-value heads for 4 query heads and 2 GDN key heads for 4 value heads."""
    model = small_config(("gdn", "attn")).model
    assert count_params(ModelConfig.from_config(model)) == _hand_count(model)


def test_gdn_conv_init_is_a_truncated_normal():
    """The short convolutions start as N(0, 0.02^2) cut at 3 std, OLMo-core's init_linear: a std of 0.02 times the
    cut's shrink, sqrt(1 - 6 phi(3) / (2 Phi(3) - 1)) = 0.9866, no weight beyond 0.06, and the tails reached."""
    config = small_config(("gdn", "gdn")).model
    config.gdn.num_key_heads, config.gdn.num_value_heads = 64, 64
    gdn = HybridLM(ModelConfig.from_config(config), nnx.Rngs(6)).groups.blocks[0].gdn
    weights = jnp.concatenate([conv.weight[...].ravel() for conv in (gdn.q_conv, gdn.k_conv, gdn.v_conv)])
    phi_3, mass = math.exp(-4.5) / math.sqrt(2 * math.pi), math.erf(3 / math.sqrt(2))
    expected_std = 0.02 * math.sqrt(1 - 6 * phi_3 / mass)
    assert weights.size == 4 * (2 * 64 * 8 + 64 * 12)
    assert abs(float(jnp.std(weights)) / expected_std - 1) < 0.04, float(jnp.std(weights))
    assert 0.05 < float(jnp.abs(weights).max()) <= 0.06 * (1 + 1e-6)


def _rms(x, weight, eps):
    return x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + eps) * weight


@pytest.mark.parametrize(
    "placement, norms", [("pre", ("gdn_norm", "mlp_norm")), ("post", ("post_gdn_norm", "post_mlp_norm"))]
)
def test_gdn_block_places_its_norms_by_gdn_norm(placement, norms):
    """A GDN block computes pre: h = x + gdn(norm(x)); out = h + mlp(norm(h)), post (OLMo-core's pretraining):
    h = x + norm(gdn(x)); out = h + norm(mlp(h)), each written out here with its own RMSNorm weights."""
    config = small_config(("gdn", "attn")).model
    config.update(dtype="float32", gdn_norm=placement)
    config = ModelConfig.from_config(config)
    block = BLOCK_KINDS["gdn"](config, nnx.Rngs(7))
    assert set(nnx.to_pure_dict(nnx.state(block, nnx.Param))) == {"gdn", "mlp", *norms}
    rng = np.random.default_rng(0)
    weights = [jnp.asarray(1 + 0.5 * rng.standard_normal(config.d_model), jnp.float32) for _ in norms]
    for name, weight in zip(norms, weights):
        getattr(block, name).weight[...] = weight
    x = jnp.asarray(rng.standard_normal((2, 16, config.d_model)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))

    def norm(index, y):
        return _rms(y, weights[index], config.norm_eps)

    def gdn(y):
        return block.gdn(y, positions, None)

    if placement == "pre":
        h = x + gdn(norm(0, x))
        expected = h + block.mlp(norm(1, h))
    else:
        h = x + norm(0, gdn(x))
        expected = h + norm(1, block.mlp(h))
    assert _rel_err(block(x, positions, None), expected) < 1e-6


def test_gdn_norm_must_be_pre_or_post():
    config = small_config(("gdn", "attn")).model
    config.gdn_norm = "middle"
    with pytest.raises(ConfigError, match=r"^config\.model\.gdn_norm='middle' is not one of \('pre', 'post'\)"):
        ModelConfig.from_config(config)


def test_a_block_kind_is_one_entry_of_the_table(monkeypatch):
    """A kind entered in BLOCK_KINDS passes the config check, and the layer groups build and run its blocks."""

    class Doubling(nnx.Module):
        def __init__(self, config, rngs):
            del rngs
            self.scale = nnx.Param(jnp.full((config.d_model,), 2.0))

        def __call__(self, x, positions, segment_ids):
            return x * self.scale[...]

    with pytest.raises(ConfigError, match=r"unknown layer types \['double'\]; use \('gdn', 'attn', 'swa'\)"):
        _model(("double", "attn"))
    monkeypatch.setitem(BLOCK_KINDS, "double", Doubling)
    model = _model(("double", "attn"))
    assert isinstance(model.groups.blocks[0], Doubling) and model.groups.blocks[0].scale.shape == (1, 32)
    assert model(_tokens(8, (1, 12))).shape == (1, 12, 320)
