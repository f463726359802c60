"""Training: loss, schedules, a small model that learns a pattern, checkpoint/resume (on token files) equal to an
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

import experiments
from hybridlm import optim
from hybridlm.data import prepare
from hybridlm.data.builtin_corpus import list_source_files, stdlib_dir
from hybridlm.loss import lm_loss
from hybridlm.metrics import LossEMA
from hybridlm.model.config import ConfigError
from hybridlm.trainer import Trainer


def _plain_loss(hidden, kernel, targets, z_loss_weight):
    """The oracle: full float32 logits, optax's cross-entropy plus the mean squared log-partition."""
    logits = hidden @ kernel
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return ce + z_loss_weight * (jax.nn.logsumexp(logits, -1) ** 2).mean()


@pytest.mark.parametrize("chunk_tokens", [7, 32, 1000])
def test_chunked_loss_and_gradients_match_the_plain_loss(chunk_tokens):
    """Chunks that do not divide the tokens (the last one padded), divide them, or hold them all: loss, parts (the
    z_loss part weighted, log_z_squared not) and the gradients of hidden states and head kernel within 1e-6 of the
    plain float32 loss, under a cotangent of 3."""
    rng = np.random.default_rng(chunk_tokens)
    hidden = jnp.asarray(rng.normal(size=(3, 37, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 50)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 37)))
    loss, parts = lm_loss(hidden, kernel, targets, 1e-2, chunk_tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(hidden @ kernel, targets).mean()
    np.testing.assert_allclose(loss, _plain_loss(hidden, kernel, targets, 1e-2), rtol=1e-6)
    np.testing.assert_allclose(parts["ce"], ce, rtol=1e-6)
    log_z_squared = (jax.nn.logsumexp(hidden @ kernel, -1) ** 2).mean()
    np.testing.assert_allclose(parts["log_z_squared"], log_z_squared, rtol=1e-6)
    np.testing.assert_allclose(parts["z_loss"], 1e-2 * log_z_squared, rtol=1e-6)  # the term added to the loss
    np.testing.assert_allclose(parts["ce"] + parts["z_loss"], loss, rtol=1e-6)
    ours = jax.grad(lambda h, w: 3.0 * lm_loss(h, w, targets, 1e-2, chunk_tokens)[0], argnums=(0, 1))(hidden, kernel)
    plain = jax.grad(lambda h, w: 3.0 * _plain_loss(h, w, targets, 1e-2), argnums=(0, 1))(hidden, kernel)
    for x, y in zip(ours, plain):
        assert float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y)) < 1e-6


def test_loss_ema_is_bias_corrected_and_leaves_out_non_finite_losses():
    """The progress bar's loss: nan before any loss, the first loss itself (not pulled towards 0), then a moving
    average in which skipped steps' non-finite losses do not count."""
    ema = LossEMA(decay=0.5)
    assert math.isnan(ema.update([]))
    assert ema.update([3.0]) == 3.0
    assert ema.update([float("nan"), 1.0, float("inf")]) == pytest.approx((0.5 * 3.0 + 1.0) / 1.5)


SCHEDULE = dict(lr=1.0, warmup_steps=10, final_lr_ratio=0.1, decay_fraction=0.2, midpoint_step=30)


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedules_warm_up_then_decay_to_final(schedule):
    config = config_dict.ConfigDict(dict(SCHEDULE, schedule=schedule))
    lr = optim.learning_rate_schedule(config, num_steps=110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(110)) == pytest.approx(0.1, abs=1e-6)
    if schedule == "wsd":
        assert float(lr(89)) == pytest.approx(1.0) and float(lr(100)) == pytest.approx(0.55)
    if schedule == "split_cosine":  # the first half over steps 10-30, the second over 30-110
        assert float(lr(20)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-5)
        assert float(lr(30)) == pytest.approx(0.55, rel=1e-6)
    quarter = 0.25  # a quarter of the way through the 100 decay steps
    expected = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * quarter)),  # 0.868
        "linear": 1.0 - 0.9 * quarter,  # 0.775
        "wsd": 1.0,  # still in the stable phase
        "split_cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (0.5 + 5 / 160))),  # 5 of the second half's 80
    }[schedule]
    assert float(lr(10 + 25)) == pytest.approx(expected, rel=1e-5)


def test_schedule_steps_beyond_the_run_and_bad_schedules():
    """schedule_steps sets where the decay ends, past the run's last step if need be; a schedule that cannot be laid
    out is refused with a one-line ConfigError."""
    config = config_dict.ConfigDict(dict(SCHEDULE, schedule="cosine", schedule_steps=210))
    lr = optim.learning_rate_schedule(config, num_steps=110)
    assert float(lr(110)) == pytest.approx(0.55, rel=1e-6)  # halfway through the 200 decay steps
    for fields, message in (
        (dict(schedule_steps=10), r"schedule_steps=10 must be above config\.optim\.warmup_steps=10"),
        (dict(schedule="split_cosine", midpoint_step=None), r"midpoint_step=None must lie between .*step 110"),
        (dict(schedule="split_cosine", midpoint_step=110), r"midpoint_step=110 must lie between .*step 110"),
        (dict(schedule="step"), r"schedule='step' is not one of \('cosine', 'linear', 'wsd', 'split_cosine'\)"),
    ):
        with pytest.raises(ConfigError, match=rf"^config\.optim\.{message}"):
            optim.learning_rate_schedule(config_dict.ConfigDict({**SCHEDULE, "schedule": "cosine", **fields}), 110)


TOKENS_PER_STEP = 8192 * 512


def _olmo_core_cosine(step: int, warmup: int, t_max: int) -> float:
    """OLMo-core's CosWithWarmup (alpha_f 0.1, warmup from 0) for peak lr 3e-4 at `step` of `t_max`."""
    peak, final = 3e-4, 3e-5
    if step < warmup:
        return peak * step / warmup
    return final + (peak - final) * (1 + math.cos(math.pi * min(step - warmup, t_max - warmup) / (t_max - warmup))) / 2


def _olmo_core_half_cosine(step: int, warmup: int, t_max: int) -> float:
    """OLMo-core's HalfCosWithWarmup (alpha_f 0.1): warmup to the midpoint lr, then the second half of a cosine."""
    peak, final = 3e-4, 3e-5
    if step < warmup:
        return (final + (peak - final) / 2) * step / warmup
    current, span = min(step - warmup, t_max - warmup), t_max - warmup
    return final + (peak - final) * (1 + math.cos(math.pi * (current + span) / (2 * span))) / 2


def _olmo3_7b_official(step: int) -> float:
    """OLMo-3-1025-7B-pretrain-1.py's schedule (5T tokens, rounded up to whole steps as OLMo-core's trainer does) up
    to step 596,047, where OLMo-3-1025-7B-pretrain-2.py took over (7T tokens; warmup to half of 5T's steps plus
    1000)."""
    if step < 596_047:
        return _olmo_core_cosine(step, 2000, math.ceil(5e12 / TOKENS_PER_STEP))
    return _olmo_core_half_cosine(step, int(5e12) // TOKENS_PER_STEP // 2 + 1000, math.ceil(7e12 / TOKENS_PER_STEP))


# experiment -> (the official lr at a step, the official run's last step, steps compared besides 0, 1000, 2000 and
# the last)
OFFICIAL_SCHEDULES = {
    # OLMo-hybrid-7B-pretrain.py: CosWithWarmup over one epoch, which ended at step 1,414,078.
    "olmo_hybrid_7b": (lambda step: _olmo_core_cosine(step, 2000, 1_414_078), 1_414_078, (500_000, 1_000_000)),
    # Steps 596,047-597,045, where part 2 ramped up to the midpoint's lr (up to 0.4% apart), are not compared.
    "olmo3_7b": (_olmo3_7b_official, 1_413_814, (300_000, 596_046, 597_046, 800_000, 1_200_000)),
}


@pytest.mark.parametrize("name", OFFICIAL_SCHEDULES)
def test_7b_schedules_follow_olmo_cores_official_scripts(name):
    official, last_step, steps = OFFICIAL_SCHEDULES[name]
    config = experiments.get_config(name)
    assert config.train.num_steps == last_step and config.data.seq_len * config.data.batch_size == TOKENS_PER_STEP
    lr = optim.learning_rate_schedule(config.optim, config.train.num_steps)
    for step in (0, 1000, 2000, *steps, last_step):
        assert float(lr(step)) == pytest.approx(official(step), rel=2e-5, abs=1e-12), step


def test_a_tiny_hybrid_learns_a_repeating_pattern(tmp_path, small_run_config):
    """The trainer's train step on its batches of a token file that repeats one random ordering of 64 ids, so each
    token fixes the next: in 20 steps the loss of a step's batch (before the step trains on it) falls from about
    ln(vocab_size) to below half the data's unigram entropy, which no model that ignores the context reaches."""
    pattern = np.random.default_rng(0).permutation(64).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", np.tile(pattern, 200))
    small_run_config.data.update(source="token_files", paths=(str(tmp_path / "tokens.npy"),))
    small_run_config.optim.lr = 3e-2
    small_run_config.train.num_steps = 100  # keeps the learning rate near its peak for these steps
    trainer = Trainer(small_run_config, tmp_path / "run")
    state = trainer.initial_state()
    losses = []
    for step in range(20):
        state, metrics = trainer.program.train_step(state, trainer.program.put_batch(trainer.data.train[step]))
        losses.append(float(metrics["loss"]))
    trainer.checkpointer.close()
    assert losses[0] > 0.95 * math.log(small_run_config.model.vocab_size), losses
    assert losses[-1] < 0.5 * trainer.data.unigram_entropy, (losses, trainer.data.unigram_entropy)


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
