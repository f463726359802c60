"""Cached generation (hybridlm/generate.py, HybridLM.prefill/decode) against the model's full forward, and its input
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import small_config
from hybridlm import generate
from hybridlm.api import Model
from hybridlm.model import HybridLM, ModelConfig
from hybridlm.sampling import Sampling, SamplingError, next_tokens

PROMPT_LENGTHS = (9, 2, 11)  # one batch of prompts of different lengths, two padded; 9 and 11 > the sliding window (8)
TOTAL = 20  # prompt + generated tokens of every row


def _model(layer_pattern: tuple[str, ...], seed: int) -> HybridLM:
    """Two float32 layer groups of `layer_pattern` at conftest's tiny widths, GDN on its chunked form."""
    config = small_config(layer_pattern)
    config.model.update(dtype="float32", num_layers=2 * len(layer_pattern))
    config.model.gdn.impl = "chunked"
    return HybridLM(ModelConfig.from_config(config.model), nnx.Rngs(seed))


@pytest.mark.parametrize("layer_pattern", [("gdn", "attn"), ("swa", "attn"), ("gdn",)])
def test_cached_decode_matches_full_forward(layer_pattern):
    seed = np.random.SeedSequence().entropy % 2**31
    model = _model(layer_pattern, seed)
    rng = np.random.default_rng(seed)
    batch, width = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS)
    sequences = rng.integers(0, model.config.vocab_size, (batch, TOTAL)).astype(np.int32)
    graphdef, state = nnx.split(model)
    full = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, sequences))  # [B, TOTAL, V]
    tokens = np.zeros((batch, width), np.int32)
    positions = np.full((batch, width), -1, np.int32)
    for row, n in enumerate(PROMPT_LENGTHS):
        tokens[row, width - n :], positions[row, width - n :] = sequences[row, :n], np.arange(n)
    prefill = jax.jit(lambda s, t, p, c: nnx.merge(graphdef, s).prefill(t, p, (p >= 0).astype(jnp.int32), c))
    decode = jax.jit(lambda s, t, p, c: nnx.merge(graphdef, s).decode(t, p, c))
    logits, cache = prefill(state, tokens, positions, model.init_cache(batch, TOTAL))
    lengths, rows = np.array(PROMPT_LENGTHS), np.arange(batch)
    steps = [(lengths - 1, logits)]
    for step in range(TOTAL - width):
        at = lengths + step
        logits, cache = decode(state, sequences[rows, at], jnp.asarray(at, jnp.int32), cache)
        steps.append((at, logits))
    for at, logits in steps:
        expected = full[rows, at]
        error = np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max()
        assert error < 1e-5, f"{layer_pattern}: positions {at}: relative error {error:.2e}"


def test_greedy_generate_matches_argmax_of_full_forward():
    """Greedy generation equals growing each sequence by the argmax of the full forward's last logits (run on the
    sequence right-padded to TOTAL tokens, which a causal model does not see, so it compiles once)."""
    model = _model(("gdn", "swa"), seed=1)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7, 9]]
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    expected = []
    for prompt in prompts:
        sequence = list(prompt)
        for _ in range(10):
            padded = jnp.asarray([sequence + [0] * (TOTAL - len(sequence))])
            sequence.append(int(np.argmax(forward(state, padded)[0, len(sequence) - 1])))
        expected.append(sequence[len(prompt) :])
    assert generate.generate(model, prompts, 10) == expected
    stop = expected[0][3]
    stopped = generate.generate(model, prompts, 10, stop_tokens=[stop])
    assert stopped[0] == expected[0][: expected[0].index(stop) + 1]


def test_decode_runs_of_any_length_draw_the_same_tokens():
    """Sampled generation is the same whether the device runs 1, 5 or 16 decode steps between reads of the host (the
    keys are per token), with stop tokens met inside a run; one prompt (decoded as two rows) draws what it draws as
    the first of two equal prompts; greedy alone equals greedy in a batch."""
    model = _model(("gdn", "attn"), seed=2)
    prompts, sampling = [[5, 3, 8], [7, 1, 2, 9, 4, 4]], Sampling(temperature=1.0, top_k=20)
    runs = {n: generate.generate(model, prompts, 12, sampling, seed=3, steps_per_sync=n) for n in (1, 5, 16)}
    assert runs[1] == runs[5] == runs[16]
    assert len(set(runs[1][0])) > 3, runs[1]  # sampled, not stuck on one token
    stop = runs[1][0][6]
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in runs[1]]
    for n in (1, 5, 16):
        assert generate.generate(model, prompts, 12, sampling, seed=3, stop_tokens=[stop], steps_per_sync=n) == expected
    twice = generate.generate(model, [prompts[1], prompts[1]], 12, sampling, seed=3)
    alone = generate.generate(model, [prompts[1]], 12, sampling, seed=3)
    assert alone == twice[:1]
    # Token t is drawn with fold_in(PRNGKey(seed), t): the first from the prompt's logits (one row), the second from
    # the full forward's logits after it (as the two equal rows one prompt decodes as).
    key, first = jax.random.key(3), model(jnp.asarray([prompts[1]]))[:, -1]
    assert int(next_tokens(first, jax.random.fold_in(key, 0), sampling)[0]) == alone[0][0]
    second = model(jnp.asarray([prompts[1] + alone[0][:1]]))[:, -1]
    assert int(next_tokens(jnp.tile(second, (2, 1)), jax.random.fold_in(key, 1), sampling)[0]) == alone[0][1]
    greedy = generate.generate(model, prompts, 12)
    assert generate.generate(model, [prompts[1]], 12) == greedy[1:]
    end = greedy[1][4]  # the stream ends at a stop token inside a run of 16 steps, without steps of no tokens
    assert len(list(generate.stream(model, [prompts[1]], 12, stop_tokens=[end]))) == greedy[1].index(end) + 1
    with pytest.raises(generate.GenerateError, match="steps_per_sync=0: give 1 or more"):
        generate.generate(model, prompts, 4, steps_per_sync=0)


@pytest.fixture(scope="module")
def api_model() -> Model:
    """A tiny float32 model (max_seq_len 32, the byte tokenizer) behind the `load_model` API."""
    config = small_config()
    config.model.update(dtype="float32", max_seq_len=32)
    config.data.tokenizer = "byte"
    model_config = ModelConfig.from_config(config.model)
    params = nnx.to_pure_dict(nnx.state(HybridLM(model_config, nnx.Rngs(0)), nnx.Param))
    return Model(model_config, params, config)


def test_string_prompts_use_the_run_tokenizer(api_model):
    tokens = api_model.generate([list(b"ab"), list(b"xyz")], 4)
    assert api_model.generate(["ab", "xyz"], 4) == [api_model.tokenizer().decode(t) for t in tokens]


@pytest.mark.parametrize(
    "prompts, max_new_tokens, match",
    [
        ([[1, 2], []], 4, "prompt 1 is empty"),
        ([list(range(33))], 1, "prompt 0 has 33 tokens but the model takes at most 32"),
        ([list(range(30))], 4, "lower max_new_tokens to at most 2"),
        ([[1, 2]], 0, "max_new_tokens=0 must be >= 1"),
        ([], 4, "prompts is empty"),
    ],
)
def test_bad_generation_arguments(api_model, prompts, max_new_tokens, match):
    with pytest.raises(generate.GenerateError, match=match):
        api_model.generate(prompts, max_new_tokens)


def test_bad_top_p():
    with pytest.raises(SamplingError, match=r"top_p=1.5 must be in \(0, 1\]"):
        Sampling(temperature=1.0, top_p=1.5)


def test_string_prompts_need_a_tokenizer(api_model):
    config = api_model.run_config.copy_and_resolve_references()
    config.data.tokenizer = ""
    with pytest.raises(ValueError, match="this checkpoint names no tokenizer"):
        Model(api_model.config, api_model.params, config).generate(["hello"], 4)
