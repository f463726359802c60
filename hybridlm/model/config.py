"""The model's architecture as a frozen dataclass, built from a run's `config.model` and checked up front."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels.attention import ATTENTION_IMPLS
from pallas_kernels.gated_norm import GATED_NORM_IMPLS
from pallas_kernels.short_conv import SHORT_CONV_IMPLS

GDN = "gdn"
ATTENTION = "attn"
SLIDING_ATTENTION = "swa"
BlockConstructor = Callable[["ModelConfig", nnx.Rngs], nnx.Module]
# The block kinds config.model.layer_pattern may name: kind -> the constructor of its block, called once per layer
# group. Each kind enters itself with `block_kind` in hybridlm.model.blocks, which hybridlm.model imports.
BLOCK_KINDS: dict[str, BlockConstructor] = {}
PRE_NORM, POST_NORM = "pre", "post"
# Where a GDN block's two RMSNorms sit (config.model.gdn_norm): on the inputs of the GDN mixer and the MLP, as in
# Olmo Hybrid's released checkpoint, or on their outputs, as in OLMo-core's pretraining.
NORM_PLACEMENTS = (PRE_NORM, POST_NORM)
DTYPES = ("float32", "bfloat16")
# Why float16 is refused, for config.model.dtype (compute) and config.model.param_dtype (weights and their updates).
_FLOAT16_PROBLEM = {
    "dtype": "float16 compute needs loss scaling, which the trainer does not do, and neither the GDN kernels nor XLA's "
    "CPU matmuls take it; use bfloat16 (the same size, with float32's range)",
    "param_dtype": "float16 weights lose AdamW's small updates and overflow above 65504; use float32 (the default) "
    "or bfloat16",
}
GDN_IMPLS = ("auto", "chunked", "naive", "pallas_gpu", "pallas_tpu")
# The forward kernels whose outputs "dots_and_kernels" keeps: Pallas calls (the GDN, Pallas attention, short
# convolution and output norm kernels, residuals included) and cuDNN's fused attention.
_KERNEL_PRIMITIVES = ("pallas_call", "dot_product_attention_fwd_wrapper")


def _saves_dots_and_kernels(primitive: jax.extend.core.Primitive, *args: object, **params: object) -> bool:
    dots = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return primitive.name in _KERNEL_PRIMITIVES or dots(primitive, *args, **params)


# What each layer group keeps for the backward pass: everything ("none": no rematerialisation), the outputs of its
# matmuls and of the attention and GDN kernels ("dots_and_kernels": only element-wise work is recomputed), the
# outputs of its matmuls ("dots": kernels are recomputed too), or only its input ("full").
REMAT_POLICIES = {
    "none": None,
    "dots_and_kernels": _saves_dots_and_kernels,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def block_kind(name: str) -> Callable[[BlockConstructor], BlockConstructor]:
    """Decorator that enters a block constructor in BLOCK_KINDS as the layer_pattern entry `name`."""

    def enter(constructor: BlockConstructor) -> BlockConstructor:
        BLOCK_KINDS[name] = constructor
        return constructor

    return enter


class ConfigError(ValueError):
    """A run's configuration cannot describe a working model or run; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class GDNConfig:
    """Gated DeltaNet layer shape (Olmo Hybrid: 30 heads, key head dim 96, value head dim 192)."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int = 4
    allow_neg_eigval: bool = True
    norm_eps: float = 1e-5
    chunk_size: int = 64
    impl: str = "auto"
    conv_impl: str = "auto"
    norm_impl: str = "auto"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's parameters and computation.

    `layer_pattern` is one period of the stack, repeated `num_layers / len(layer_pattern)` times; each entry is a
    kind of BLOCK_KINDS: "gdn" (Gated DeltaNet block), "attn" (full causal attention) or "swa" (sliding-window
    attention). `gdn_norm` places the GDN blocks' norms (NORM_PLACEMENTS).
    """

    vocab_size: int
    d_model: int
    num_layers: int
    layer_pattern: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_hidden: int
    gdn: GDNConfig
    max_seq_len: int
    gdn_norm: str = PRE_NORM
    use_rope: bool = True
    rope_theta: float = 500_000.0
    sliding_window: int = 4096
    norm_eps: float = 1e-6
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "bfloat16"
    remat: str = "full"
    scan_layers: bool = True
    attention_impl: str = "auto"
    loss_chunk_tokens: int = 8192

    @property
    def num_groups(self) -> int:
        return self.num_layers // len(self.layer_pattern)

    @property
    def layer_types(self) -> tuple[str, ...]:
        return self.layer_pattern * self.num_groups

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_config(cls, model: Any) -> "ModelConfig":
        """Builds and validates from a `config.model` ConfigDict (or any mapping with the same keys)."""
        fields = dict(model)
        gdn = GDNConfig(**dict(fields.pop("gdn")))
        fields["layer_pattern"] = tuple(fields["layer_pattern"])
        if fields.get("head_dim") is None:
            fields["head_dim"] = _default_head_dim(fields)
        config = cls(gdn=gdn, **fields)
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ConfigError naming the first field that cannot work."""
        _check(
            self.layer_pattern,
            "config.model.layer_pattern is empty; give one period such as ('gdn', 'gdn', 'gdn', 'attn')",
        )
        unknown = [t for t in self.layer_pattern if t not in BLOCK_KINDS]
        _check(not unknown, f"config.model.layer_pattern has unknown layer types {unknown}; use {tuple(BLOCK_KINDS)}")
        _check(
            self.gdn_norm in NORM_PLACEMENTS,
            f"config.model.gdn_norm={self.gdn_norm!r} is not one of {NORM_PLACEMENTS}: 'pre' normalises the GDN "
            "and MLP inputs (Olmo Hybrid's released checkpoint), 'post' their outputs (OLMo-core's pretraining)",
        )
        _check(
            self.num_layers > 0 and self.num_layers % len(self.layer_pattern) == 0,
            f"config.model.num_layers={self.num_layers} is not a positive multiple of the layer pattern's length "
            f"{len(self.layer_pattern)} ({self.layer_pattern}); change one of them",
        )
        sizes = ("vocab_size", "d_model", "num_heads", "num_kv_heads", "head_dim", "mlp_hidden", "max_seq_len")
        for name in (*sizes, "loss_chunk_tokens"):
            _check(getattr(self, name) > 0, f"config.model.{name}={getattr(self, name)} must be positive")
        _check(
            self.num_heads % self.num_kv_heads == 0,
            f"config.model.num_heads={self.num_heads} is not a multiple of config.model.num_kv_heads="
            f"{self.num_kv_heads}; grouped-query attention needs whole groups",
        )
        _check(
            not self.use_rope or self.head_dim % 2 == 0,
            f"config.model.head_dim={self.head_dim} is odd; RoPE needs an even head dim (or set use_rope=False)",
        )
        _check(
            not self.use_rope or is_positive_finite(self.rope_theta),
            f"config.model.rope_theta={self.rope_theta} must be positive and finite, e.g. 500000",
        )
        for name, value, example in (
            ("norm_eps", self.norm_eps, "1e-6"),
            ("gdn.norm_eps", self.gdn.norm_eps, "1e-5"),
            ("init_std", self.init_std, "0.02"),
        ):
            _check(is_positive_finite(value), f"config.model.{name}={value} must be positive and finite, e.g. {example}")
        _check(
            SLIDING_ATTENTION not in self.layer_pattern or self.sliding_window > 0,
            f"config.model.sliding_window={self.sliding_window} must be positive for 'swa' layers",
        )
        gdn = self.gdn
        for name in ("num_key_heads", "num_value_heads", "key_head_dim", "value_head_dim", "conv_kernel", "chunk_size"):
            _check(getattr(gdn, name) > 0, f"config.model.gdn.{name}={getattr(gdn, name)} must be positive")
        _check(
            gdn.num_value_heads % gdn.num_key_heads == 0,
            f"config.model.gdn.num_value_heads={gdn.num_value_heads} is not a multiple of "
            f"config.model.gdn.num_key_heads={gdn.num_key_heads}",
        )
        _check(
            self.remat in REMAT_POLICIES, f"config.model.remat={self.remat!r} is not one of {tuple(REMAT_POLICIES)}"
        )
        _check(
            self.attention_impl in ATTENTION_IMPLS,
            f"config.model.attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}",
        )
        _check(gdn.impl in GDN_IMPLS, f"config.model.gdn.impl={gdn.impl!r} is not one of {GDN_IMPLS}")
        _check(
            gdn.conv_impl in SHORT_CONV_IMPLS,
            f"config.model.gdn.conv_impl={gdn.conv_impl!r} is not one of {SHORT_CONV_IMPLS}",
        )
        _check(
            gdn.norm_impl in GATED_NORM_IMPLS,
            f"config.model.gdn.norm_impl={gdn.norm_impl!r} is not one of {GATED_NORM_IMPLS}",
        )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            _check(value != "float16", f"config.model.{name}='float16' is not supported: {_FLOAT16_PROBLEM[name]}")
            _check(value in DTYPES, f"config.model.{name}={value!r} is not one of {DTYPES}")

    def check_seq_len(self, seq_len: int) -> None:
        """Raises ConfigError when the model cannot take sequences of `seq_len` tokens."""
        _check(
            0 < seq_len <= self.max_seq_len,
            f"sequence length {seq_len} is outside what the model takes (1..config.model.max_seq_len="
            f"{self.max_seq_len}); lower config.data.seq_len or raise config.model.max_seq_len",
        )


def _default_head_dim(fields: dict[str, Any]) -> int:
    d_model, num_heads = fields["d_model"], fields["num_heads"]
    _check(
        num_heads > 0 and d_model % num_heads == 0,
        f"config.model.d_model={d_model} is not divisible by config.model.num_heads={num_heads}; "
        "change one of them or set config.model.head_dim",
    )
    return d_model // num_heads


def is_positive_finite(value: float) -> bool:
    """Whether `value` is a positive number other than inf (nan is not)."""
    return math.isfinite(value) and value > 0


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise ConfigError(message)
