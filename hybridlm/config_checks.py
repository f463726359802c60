"""Checks a whole run config (model, data, optimizer, loop) before anything is built or compiled."""

from __future__ import annotations

import math

import jax
from ml_collections import config_dict

from hybridlm import partitioning
from hybridlm.data.pipeline import resolve_tokenizer
from hybridlm.data.sources import SOURCES, path_sources
from hybridlm.data.token_files import TOKEN_DTYPES
from hybridlm.data.tokenizer import BYTE, ByteTokenizer
from hybridlm.model.config import GDN, ConfigError, ModelConfig, is_positive_finite
from hybridlm.optim import check_schedule


def validate(config: config_dict.ConfigDict) -> ModelConfig:
    """Returns the model config, or raises ConfigError naming the first field that cannot work and the fix.

    Fills in `config.data.tokenizer` and `config.data.eos_token` where unset, from the data (token files' metadata.json)
    or as the byte tokenizer, so that the run config recorded in the workdir names the tokenizer (a synthetic task's
    run has none)."""
    try:
        model = ModelConfig.from_config(config.model)
    except TypeError as e:
        raise ConfigError(f"config.model does not describe a model: {e}") from None
    data, optim, train = config.data, config.optim, config.train
    model.check_seq_len(data.seq_len)
    _check_data(data, model.vocab_size)
    _check(data.batch_size > 0, f"config.data.batch_size={data.batch_size} must be positive")
    _check(config.seed >= 0, f"config.seed={config.seed} must be 0 or more, e.g. 0")
    _check_mesh(config, model)
    _check_optim(optim)
    _check(0.0 <= optim.final_lr_ratio <= 1.0, f"config.optim.final_lr_ratio={optim.final_lr_ratio} must be in [0, 1]")
    _check(0.0 < optim.decay_fraction <= 1.0, f"config.optim.decay_fraction={optim.decay_fraction} must be in (0, 1]")
    _check(
        0 <= optim.warmup_steps < train.num_steps,
        f"config.optim.warmup_steps={optim.warmup_steps} must be in [0, config.train.num_steps={train.num_steps})",
    )
    check_schedule(optim, train.num_steps)
    for name in (
        "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips"
    ):
        _check(train[name] > 0, f"config.train.{name}={train[name]} must be positive")
    peak = train.get("peak_flops_per_device")
    _check(
        peak is None or peak > 0,
        f"config.train.peak_flops_per_device={peak} must be positive, e.g. 989e12 for an H100 (or None: by device kind)",
    )
    minutes = train.get("checkpoint_minutes")
    _check(minutes is None or minutes > 0, f"config.train.checkpoint_minutes={minutes} must be positive (None: off)")
    return model


def _check_optim(optim: config_dict.ConfigDict) -> None:
    """AdamW's numbers: a positive, finite learning rate, eps and clipping norm, betas in [0, 1), and a weight decay
    and z-loss weight that are finite and not negative."""
    for name, ok, wanted in (
        ("lr", is_positive_finite(optim.lr), "positive and finite, e.g. 3e-4"),
        ("b1", 0.0 <= optim.b1 < 1.0, "in [0, 1), e.g. 0.9"),
        ("b2", 0.0 <= optim.b2 < 1.0, "in [0, 1), e.g. 0.95"),
        ("eps", is_positive_finite(optim.eps), "positive and finite, e.g. 1e-8"),
        ("grad_clip", optim.grad_clip > 0, "positive (the largest global gradient norm; inf: no clipping), e.g. 1.0"),
        ("weight_decay", math.isfinite(optim.weight_decay) and optim.weight_decay >= 0, "0 or more, e.g. 0.1"),
        ("z_loss", math.isfinite(optim.z_loss) and optim.z_loss >= 0, "0 or more, e.g. 1e-5"),
    ):
        _check(ok, f"config.optim.{name}={optim[name]} must be {wanted}")


def _check_mesh(config: config_dict.ConfigDict, model: ModelConfig) -> None:
    """The mesh's axis sizes against the device count, its rules, and every split they imply: the batch over the
    batch axes, the heads, MLP width, vocabulary and d_model over theirs."""
    sizes = partitioning.mesh_shape(config.mesh, jax.device_count())
    rules = partitioning.rules_from_config(config.mesh.get("rules"))
    splits = {  # logical axis -> the config field of its size
        "batch": ("config.data.batch_size", config.data.batch_size),
        "embed": ("config.model.d_model", model.d_model),
        "vocab": ("config.model.vocab_size", model.vocab_size),
        "mlp": ("config.model.mlp_hidden", model.mlp_hidden),
    }
    if set(model.layer_pattern) - {GDN}:
        splits["heads"] = ("config.model.num_heads", model.num_heads)
        splits["kv_heads"] = ("config.model.num_kv_heads", model.num_kv_heads)
    if GDN in model.layer_pattern:
        splits["gdn_key_heads"] = ("config.model.gdn.num_key_heads", model.gdn.num_key_heads)
        splits["gdn_value_heads"] = ("config.model.gdn.num_value_heads", model.gdn.num_value_heads)
    for logical, (field, size) in splits.items():
        axes = rules[logical]
        parts = math.prod(sizes[axis] for axis in axes)
        shown = " x ".join(f"config.mesh.{axis}={sizes[axis]}" for axis in axes)
        _check(
            size % parts == 0,
            f"{field}={size} does not split over {shown} ({parts} devices, logical axis {logical!r}); choose mesh "
            f"sizes whose product divides {size}, or change config.mesh.rules.{logical}",
        )


def _check_data(data: config_dict.ConfigDict, vocab_size: int) -> None:
    """The data source (hybridlm.data.sources) and what it needs: paths, weights, dtype; then, for sources of text or
    tokens, the tokenizer, filled in where unset (hybridlm.data.pipeline.resolve_tokenizer), against the data and the
    model's vocab size."""
    _check(data.source in SOURCES, f"config.data.source={data.source!r} is not one of {tuple(SOURCES)}")
    source, name = SOURCES[data.source], data.source
    _check(
        0.0 < data.heldout_fraction < 1.0,
        f"config.data.heldout_fraction={data.heldout_fraction} must be in (0, 1), e.g. 0.05",
    )
    paths, weights = tuple(data.paths), data.weights
    if source.takes_paths:
        _check(
            bool(paths) and all(isinstance(p, str) and p for p in paths),
            f"config.data.source={name!r} needs config.data.paths: files or globs, e.g. "
            f"--config.data.paths='data/*.npy' (got {paths!r})",
        )
    else:
        _check(not paths, f"config.data.paths={paths!r} is only read by the sources {path_sources()}, not {name!r}")
    if weights is not None:
        _check(
            source.takes_paths and len(weights) == len(paths) and all(w > 0 for w in weights),
            f"config.data.weights={tuple(weights)!r} must be one positive weight per entry of config.data.paths "
            f"({len(paths)} entries) of a file source {path_sources()}",
        )
    _check(
        data.dtype is None or data.dtype in TOKEN_DTYPES,
        f"config.data.dtype={data.dtype!r} is not one of {TOKEN_DTYPES} (or None: from the files' metadata)",
    )
    _check(
        data.max_bytes is None or data.max_bytes > 0,
        f"config.data.max_bytes={data.max_bytes} must be positive, e.g. 400000 (None: the whole built-in corpus)",
    )
    for key, example in source.needs:
        _check(bool(data[key]), f"config.data.source={name!r} needs config.data.{key}, e.g. {example}")
    if source.examples:  # a task's token ids are its own (its vocab is checked where it is built, before compile)
        return
    try:
        resolve_tokenizer(data, vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check(
        data.tokenizer != BYTE or data.eos_token is None,
        f"config.data.eos_token={data.eos_token!r} is only read with a Hugging Face tokenizer; the byte tokenizer ends "
        f"documents with id {ByteTokenizer.eos_id}: drop config.data.eos_token, or set config.data.tokenizer to a "
        "tokenizer.json",
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
