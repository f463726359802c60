"""Training: loss, schedules, weight-decay mask, a loss that falls, checkpoint/resume (on token files) equal to an
unbroken run."""

import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import config_dict

from hybridlm import optim
from hybridlm.data import prepare
from hybridlm.data.builtin_corpus import list_source_files, stdlib_dir
from hybridlm.loss import lm_loss
from hybridlm.model.config import ConfigError
from hybridlm.trainer import Trainer


def _plain_loss(hidden, kernel, targets, z_loss_weight):
    """The oracle: full float32 logits, optax's cross-entropy plus the mean squared log-partition."""
    logits = hidden @ kernel
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return ce + z_loss_weight * (jax.nn.logsumexp(logits, -1) ** 2).mean()


@pytest.mark.parametrize("chunk_tokens", [7, 32, 1000])
def test_chunked_loss_and_gradients_match_the_plain_loss(chunk_tokens):
    """Chunks that do not divide the tokens (the last one padded), divide them, or hold them all: loss, parts and
    the gradients of hidden states and head kernel within 1e-6 of the plain float32 loss, under a cotangent of 3."""
    rng = np.random.default_rng(chunk_tokens)
    hidden = jnp.asarray(rng.normal(size=(3, 37, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 50)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 37)))
    loss, parts = lm_loss(hidden, kernel, targets, 1e-2, chunk_tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(hidden @ kernel, targets).mean()
    np.testing.assert_allclose(loss, _plain_loss(hidden, kernel, targets, 1e-2), rtol=1e-6)
    np.testing.assert_allclose(parts["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(parts["z_loss"], (loss - ce) / 1e-2, rtol=1e-4)
    ours = jax.grad(lambda h, w: 3.0 * lm_loss(h, w, targets, 1e-2, chunk_tokens)[0], argnums=(0, 1))(hidden, kernel)
    plain = jax.grad(lambda h, w: 3.0 * _plain_loss(h, w, targets, 1e-2), argnums=(0, 1))(hidden, kernel)
    for x, y in zip(ours, plain):
        assert float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y)) < 1e-6


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedules_warm_up_then_decay_to_final(schedule):
    config = config_dict.ConfigDict(
        dict(lr=1.0, schedule=schedule, warmup_steps=10, final_lr_ratio=0.1, decay_fraction=0.2)
    )
    lr = optim.learning_rate_schedule(config, num_steps=110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(110)) == pytest.approx(0.1, abs=1e-6)
    if schedule == "wsd":
        assert float(lr(89)) == pytest.approx(1.0) and float(lr(100)) == pytest.approx(0.55)
    quarter = 0.25  # a quarter of the way through the 100 decay steps
    expected = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * quarter)),  # 0.868
        "linear": 1.0 - 0.9 * quarter,  # 0.775
        "wsd": 1.0,  # still in the stable phase
    }[schedule]
    assert float(lr(10 + 25)) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_skips_only_embeddings():
    params = {"embed": {"embedding": 1.0}, "lm_head": {"kernel": 1.0}, "final_norm": {"weight": 1.0}}
    assert optim.weight_decay_mask(params) == {
        "embed": {"embedding": False},
        "lm_head": {"kernel": True},
        "final_norm": {"weight": True},
    }


def test_steps_on_a_fixed_batch_reduce_the_loss(tmp_path, small_run_config):
    small_run_config.train.num_steps = 100  # keeps the learning rate near its peak for these steps
    trainer = Trainer(small_run_config, tmp_path)
    state = trainer.initial_state()
    batch = trainer.data.train[0]
    losses = []
    for _ in range(8):
        state, metrics = trainer.program.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    trainer.checkpointer.close()
    assert losses[-1] < 0.9 * losses[0], losses


def _losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.fixture
def token_files_config(tmp_path, small_run_config):
    """The small run on OLMo-style token files that prepare_data made from a folder of text files (some of the
    standard library's sources)."""
    root = stdlib_dir()
    text_dir = tmp_path / "text"
    for rel_path in list_source_files(root)[:40]:
        (text_dir / rel_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pathlib.Path(root) / rel_path, text_dir / rel_path)
    parts = prepare.directory_parts(str(text_dir), "text")
    prepare.prepare(parts, tmp_path / "tokens", tokenizer="byte", eos_token=None, workers=1, source=str(text_dir))
    small_run_config.data.update(source="token_files", paths=(str(tmp_path / "tokens" / "*.npy"),))
    return small_run_config


def test_resume_continues_exactly(tmp_path, token_files_config):
    """Stopping after a checkpoint and rerunning with the same workdir gives the unbroken run's losses, bitwise; the
    checkpoint holds the data iterator's state, and a data config that would change the batches is refused."""
    unbroken = tmp_path / "unbroken"
    with_peak = token_files_config.copy_and_resolve_references()
    with_peak.train.peak_flops_per_device = 1e9  # the CPU has no known peak: MFU against this one
    trainer = Trainer(with_peak, unbroken)
    last = trainer.train()
    assert np.isfinite(last["eval_loss"]) and (unbroken / "tensorboard").is_dir()
    assert last["tokens_per_sec_per_device"] == last["tokens_per_sec"] / jax.device_count()
    flops_per_token = trainer.program.flops_per_step / trainer.program.tokens_per_step
    assert last["mfu"] == pytest.approx(last["tokens_per_sec"] * flops_per_token / (1e9 * jax.device_count()))

    resumed = tmp_path / "resumed"
    first_half = token_files_config.copy_and_resolve_references()
    first_half.train.num_steps = 3
    Trainer(first_half, resumed).train()
    data_state = json.loads((resumed / "checkpoints" / "3" / "data" / "metadata").read_text())
    assert data_state["iterator"] == {"next_index": 3}
    assert [p["file"] for p in data_state["fingerprint"]["train"][0]["parts"]][0] == "part-00000.npy"
    resume = token_files_config.copy_and_resolve_references()
    resume.train.allow_resume_changes = True  # the first half stopped by a smaller num_steps (the same lr so far)
    trainer = Trainer(resume, resumed)
    assert int(trainer.initial_state()["step"]) == 3
    trainer.train()
    assert _losses(resumed) == _losses(unbroken)
    assert sorted(_losses(resumed)) == [1, 2, 3, 4, 5, 6]

    changed = token_files_config.copy_and_resolve_references()
    changed.data.heldout_fraction = 0.3
    with pytest.raises(ConfigError, match=r"different batches \(heldout\[0\]\.range\[0\]: \d+ there, \d+ now\)"):
        Trainer(changed, resumed).initial_state()


def test_workdir_refuses_a_different_model(tmp_path, small_run_config):
    Trainer(small_run_config, tmp_path).checkpointer.close()
    other = small_run_config.copy_and_resolve_references()
    other.model.d_model = 64
    with pytest.raises(ValueError, match="config.model.d_model"):
        Trainer(other, tmp_path)


@pytest.mark.slow
def test_tiny_hybrid_learns_the_builtin_data(tmp_path):
    """The README's first run, shortened: the held-out loss ends far below the data's unigram entropy."""
    import experiments

    config = experiments.get_config("tiny_hybrid")
    config.train.num_steps = 300
    trainer = Trainer(config, tmp_path)
    last = trainer.train()
    assert last["eval_loss"] < 0.7 * trainer.data.unigram_entropy, (last["eval_loss"], trainer.data.unigram_entropy)
