"""Training on a per-token loss mask: the masked chunked loss, its path through the trainer, and the `task` data
source (hybridlm.data.task_batches) from the command line."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import experiments
from hybridlm import config_checks, trainer
from hybridlm.data.pipeline import load_data
from hybridlm.loss import lm_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _case(seed: int) -> tuple[jax.Array, ...]:
    """hidden [3, 37, 16], kernel [16, 50], targets [3, 37], and a 0/1 loss mask [3, 37] with some of each."""
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(3, 37, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 50)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 37)))
    mask = jnp.asarray(rng.random((3, 37)) < 0.4, jnp.float32)
    return hidden, kernel, targets, mask


def _plain_masked_loss(hidden, kernel, targets, mask, z_loss_weight):
    """The oracle: full float32 logits, the mask-weighted means of optax's cross-entropy and of logsumexp^2."""
    logits = hidden @ kernel
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    z = jax.nn.logsumexp(logits, -1) ** 2
    return jnp.sum(mask * (ce + z_loss_weight * z)) / jnp.sum(mask)


@pytest.mark.parametrize("chunk_tokens", [7, 32, 1000])
def test_masked_chunked_loss_and_gradients_match_the_plain_masked_loss(chunk_tokens):
    hidden, kernel, targets, mask = _case(chunk_tokens)
    loss, parts = lm_loss(hidden, kernel, targets, 1e-2, chunk_tokens, mask)
    np.testing.assert_allclose(loss, _plain_masked_loss(hidden, kernel, targets, mask, 1e-2), rtol=1e-6)
    np.testing.assert_allclose(parts["ce"], _plain_masked_loss(hidden, kernel, targets, mask, 0.0), rtol=1e-6)
    ours = jax.grad(lambda h, w: 3.0 * lm_loss(h, w, targets, 1e-2, chunk_tokens, mask)[0], argnums=(0, 1))
    plain = jax.grad(lambda h, w: 3.0 * _plain_masked_loss(h, w, targets, mask, 1e-2), argnums=(0, 1))
    for x, y in zip(ours(hidden, kernel), plain(hidden, kernel)):
        assert float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y)) < 1e-6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_no_mask_and_a_mask_of_ones_give_bit_identical_losses_and_gradients(dtype):
    """Without a mask every token weighs 1; a mask of ones is the same weighting, reached through the masked path."""
    hidden, kernel, targets, _ = _case(0)
    hidden = hidden.astype(dtype)
    ones = jnp.ones(targets.shape, jnp.float32)

    def value_and_grads(mask):
        fn = jax.value_and_grad(lambda h, w: lm_loss(h, w, targets, 1e-2, 16, mask)[0], argnums=(0, 1))
        return jax.jit(fn)(hidden, kernel)

    for x, y in zip(jax.tree.leaves(value_and_grads(None)), jax.tree.leaves(value_and_grads(ones))):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_an_all_zero_mask_gives_a_zero_loss_and_gradient():
    hidden, kernel, targets, _ = _case(1)
    zeros = jnp.zeros(targets.shape, jnp.float32)
    loss, grads = jax.value_and_grad(lambda h: lm_loss(h, kernel, targets, 1e-2, 16, zeros)[0])(hidden)
    assert float(loss) == 0.0 and not np.any(np.asarray(grads))


def _tiny_task_config():
    config = experiments.get_config("tiny_transformer")
    config.data.source, config.data.task = "task", "parity"
    config.data.seq_len, config.data.batch_size = 16, 4
    config.data.task_args.max_len = 12
    config.model.d_model, config.model.num_heads, config.model.mlp_hidden = 32, 2, 64
    return config


def test_the_train_step_sees_the_loss_mask():
    """Through the trainer's loss: changing a masked position's target changes neither the loss nor the gradient;
    changing an unmasked one's changes both."""
    config = _tiny_task_config()
    program = trainer.TrainProgram(config, config_checks.validate(config))
    params = program.init_state()["params"]
    batch = {k: jnp.asarray(v) for k, v in load_data(config).train[0].items()}
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: trainer._forward_loss(program.graphdef, p, b, 1e-4, True)[0]))
    loss, grads = grad_fn(params, batch)
    masked = tuple(int(i) for i in np.argwhere(np.asarray(batch["loss_mask"]) == 0)[0])
    answer = tuple(int(i) for i in np.argwhere(np.asarray(batch["loss_mask"]) == 1)[0])

    def with_target(position):
        return {**batch, "targets": batch["targets"].at[position].set((batch["targets"][position] + 1) % 3)}

    loss_masked, grads_masked = grad_fn(params, with_target(masked))
    assert float(loss_masked) == float(loss)
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_masked)):
        np.testing.assert_array_equal(x, y)
    loss_answer, grads_answer = grad_fn(params, with_target(answer))
    assert float(loss_answer) != float(loss)
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_answer)))


def test_task_batches_hold_the_task_examples_in_order():
    config = _tiny_task_config()
    data = load_data(config)
    batch = data.train[1]
    assert sorted(batch) == ["inputs", "loss_mask", "segment_ids", "targets"]
    assert batch["inputs"].shape == (4, 16) and batch["loss_mask"].dtype == np.float32
    from hybridlm.tasks import make_task

    task = make_task("parity", seq_len=16, min_len=3, max_len=12, seed=config.seed)
    np.testing.assert_array_equal(batch["targets"][2], task[4 + 2]["targets"])
    assert not np.array_equal(data.heldout[0]["inputs"], data.train[0]["inputs"])


def test_a_task_run_needs_no_tokenizer_and_only_the_tasks_vocab():
    """Parity's 3 token ids fit a model of 8 (below any text tokenizer's): the config checks and the data load."""
    config = _tiny_task_config()
    config.model.vocab_size = 8
    config_checks.validate(config)
    assert config.data.tokenizer is None
    assert int(load_data(config).train[0]["inputs"].max()) < 8
    config.model.vocab_size = 2
    with pytest.raises(ValueError, match="config.model.vocab_size=2 is below the 3 token ids of the task 'parity'"):
        load_data(config)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.data.task=parityy", "config.data.task='parityy' is not a task"),
        ("--config.data.task_args.max_len=64", "config.data.task_args="),
    ],
)
def test_bad_task_settings_fail_in_one_line(tmp_path, override, message):
    result = _train(tmp_path, override)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ") and message in result.stderr


def _train(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        "--config=tiny_transformer",
        f"--workdir={workdir}",
        "--config.data.source=task",
        "--config.data.task=parity",
        "--config.data.seq_len=16",
        "--config.data.task_args.max_len=12",
        "--config.data.batch_size=16",
        "--config.model.d_model=32",
        "--config.model.num_heads=2",
        "--config.model.mlp_hidden=64",
        "--config.train.num_steps=60",
        "--config.optim.warmup_steps=5",
        "--config.train.log_every=10",
        "--config.train.eval_every=60",
        "--config.train.eval_batches=2",
        *overrides,
    ]
    return subprocess.run(
        [sys.executable, "-m", "hybridlm.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_task_trains_from_the_command_line(tmp_path):
    """Parity through the CLI: the run reports the answer tokens' entropy (ln 2: the mask leaves out the padding),
    and the masked loss falls from about ln(vocab) towards it."""
    result = _train(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "unigram entropy of the training data: 0.6931 nats/token" in result.stdout + result.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["ce"] for r in records if "ce" in r]
    assert losses[-1] < 1.0 < losses[0], losses
