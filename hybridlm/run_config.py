"""Checks a whole run config (model, data, optimizer, loop) before anything is built or compiled."""

from __future__ import annotations

import jax
from ml_collections import config_dict

from hybridlm.data import ByteTokenizer
from hybridlm.model.config import ConfigError, ModelConfig
from hybridlm.optim import SCHEDULES

DATA_SOURCES = ("builtin",)


def validate(config: config_dict.ConfigDict) -> ModelConfig:
    """Returns the model config, or raises ConfigError naming the first field that cannot work and the fix."""
    try:
        model = ModelConfig.from_config(config.model)
    except TypeError as e:
        raise ConfigError(f"config.model does not describe a model: {e}") from None
    data, optim, train = config.data, config.optim, config.train
    model.check_seq_len(data.seq_len)
    _check(data.source in DATA_SOURCES, f"config.data.source={data.source!r} is not one of {DATA_SOURCES}")
    _check(
        ByteTokenizer.vocab_size <= model.vocab_size,
        f"the built-in byte tokenizer has {ByteTokenizer.vocab_size} ids but config.model.vocab_size="
        f"{model.vocab_size}; raise the model's vocab_size",
    )
    _check(
        data.batch_size > 0 and data.batch_size % jax.device_count() == 0,
        f"config.data.batch_size={data.batch_size} must be a positive multiple of the device count "
        f"{jax.device_count()}",
    )
    _check(optim.schedule in SCHEDULES, f"config.optim.schedule={optim.schedule!r} is not one of {SCHEDULES}")
    _check(optim.lr > 0, f"config.optim.lr={optim.lr} must be positive")
    _check(0.0 <= optim.final_lr_ratio <= 1.0, f"config.optim.final_lr_ratio={optim.final_lr_ratio} must be in [0, 1]")
    _check(0.0 < optim.decay_fraction <= 1.0, f"config.optim.decay_fraction={optim.decay_fraction} must be in (0, 1]")
    _check(
        0 <= optim.warmup_steps < train.num_steps,
        f"config.optim.warmup_steps={optim.warmup_steps} must be in [0, config.train.num_steps={train.num_steps})",
    )
    for name in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        _check(train[name] > 0, f"config.train.{name}={train[name]} must be positive")
    return model


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
