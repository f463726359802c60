"""Next-token sampling: greedy is argmax, sampled frequencies follow the filtered, tempered softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlm.sampling import Sampling, SamplingError, next_tokens

DRAWS = 40_000


def _frequencies(probs: np.ndarray, sampling: Sampling, seed: int = 0) -> np.ndarray:
    """Each token's share of DRAWS samples from one row of logits log(probs)."""
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (DRAWS, len(probs)))
    tokens = np.asarray(next_tokens(logits, jax.random.key(seed), sampling))
    return np.bincount(tokens, minlength=len(probs)) / DRAWS


def _assert_follows(frequencies: np.ndarray, expected: np.ndarray) -> None:
    """Within 5 binomial standard deviations per token (and exactly 0 where expected is 0)."""
    sigma = np.sqrt(expected * (1 - expected) / DRAWS)
    assert np.all(np.abs(frequencies - expected) <= 5 * sigma + 1e-12), (frequencies, expected)


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(1), (16, 300)) * 3
    tokens = next_tokens(logits.astype(jnp.bfloat16), jax.random.key(2), Sampling())
    np.testing.assert_array_equal(tokens, jnp.argmax(logits.astype(jnp.bfloat16), axis=-1))
    assert tokens.dtype == jnp.int32


def test_temperature_one_follows_the_softmax():
    probs = np.array([0.45, 0.25, 0.15, 0.1, 0.05])
    _assert_follows(_frequencies(probs, Sampling(temperature=1.0)), probs)


def test_temperature_sharpens_and_flattens():
    probs = np.array([0.45, 0.25, 0.15, 0.1, 0.05])
    for temperature in (0.5, 2.0):
        tempered = probs ** (1 / temperature)
        _assert_follows(_frequencies(probs, Sampling(temperature=temperature)), tempered / tempered.sum())


def test_top_k_renormalises_over_the_k_most_likely():
    probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    expected = np.where(np.isin(np.arange(5), [1, 3]), probs, 0) / 0.7
    _assert_follows(_frequencies(probs, Sampling(temperature=1.0, top_k=2)), expected)


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.7, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    expected = np.where(np.isin(np.arange(4), kept), probs, 0)
    _assert_follows(_frequencies(probs[[2, 0, 3, 1]], Sampling(temperature=1.0, top_p=top_p))[[1, 3, 0, 2]],
                    expected / expected.sum())


def test_rows_sample_independently_and_the_seed_decides():
    logits = jnp.zeros((64, 50))
    sampling = Sampling(temperature=1.0)
    first, again = (next_tokens(logits, jax.random.key(7), sampling) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert len(set(np.asarray(first).tolist())) > 20
    assert not np.array_equal(first, next_tokens(logits, jax.random.key(8), sampling))


@pytest.mark.parametrize(
    "settings, named", [({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                        ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")]
)
def test_bad_settings_are_refused(settings, named):
    with pytest.raises(SamplingError, match=named):
        Sampling(**settings)
