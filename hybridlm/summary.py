"""A run described in a few lines: the model's size and cost (`python -m experiments --show` ends with them) and
the block the trainer prints when it starts (devices, mesh, the kernels chosen for this platform, tokens)."""

from __future__ import annotations

import jax
import numpy as np
from ml_collections import config_dict

from hybridlm import flops
from hybridlm.model import ModelConfig, count_params
from hybridlm.model.config import ATTENTION, GDN, SLIDING_ATTENTION
from pallas_kernels.attention import ops as attention_ops
from pallas_kernels.gated_norm import ops as gated_norm_ops
from pallas_kernels.gdn import ops as gdn_ops
from pallas_kernels.short_conv import ops as short_conv_ops


def size_lines(model: ModelConfig, seq_len: int) -> list[str]:
    """The parameters of `model`, with and without the embedding table, and its training FLOPs per token at
    `seq_len` (hybridlm.flops)."""
    params = count_params(model)
    embedding = model.vocab_size * model.d_model
    return [
        f"parameters: {params:,} ({params - embedding:,} without the embedding table)",
        f"training FLOPs per token at seq_len {seq_len}: {flops.flops_per_token(model, seq_len):,.0f}",
    ]


def kernel_impls(model: ModelConfig, document_mask: bool, seq_len: int) -> dict[str, str]:
    """{"attention": impl, "GDN": impl, "short conv": impl, "output norm": impl} for the kinds of layer `model` has:
    what its attention_impl, gdn.impl, gdn.conv_impl and gdn.norm_impl run as on this platform, "auto" resolved as
    the kernels resolve it (`document_mask`: rows hold segment ids; the short convolution's at `seq_len` over its
    narrower, normalized width; the GDN output norm's over one sequence)."""
    impls = {}
    if {ATTENTION, SLIDING_ATTENTION} & set(model.layer_pattern):
        impls["attention"] = attention_ops.resolve_impl(
            model.attention_impl, model.compute_dtype, model.head_dim, document_mask
        )
    if GDN in model.layer_pattern:
        gdn = model.gdn
        # The GDN layers hand the rule float32 gates (or bfloat16 / float32 activations): it accumulates in float32.
        impls["GDN"] = gdn_ops.resolve_impl(
            gdn.impl, gdn.key_head_dim, gdn.value_head_dim, gdn.chunk_size, np.dtype(np.float32)
        )
        key_width = gdn.num_key_heads * gdn.key_head_dim
        impls["short conv"] = short_conv_ops.resolve_impl(
            gdn.conv_impl, (1, seq_len, key_width), gdn.conv_kernel, gdn.key_head_dim
        )
        value_heads = (seq_len, gdn.num_value_heads, gdn.value_head_dim)
        impls["output norm"] = gated_norm_ops.resolve_impl(gdn.norm_impl, value_heads)
    return impls


def startup_lines(
    config: config_dict.ConfigDict, model: ModelConfig, mesh: jax.sharding.Mesh, name: str | None
) -> list[str]:
    """What the trainer prints once when a run starts: the experiment (`name`, when known, and its description),
    its size and cost (`size_lines`), the devices, backend and mesh, the kernels (`kernel_impls`) and the tokens
    per step and over the run."""
    device, processes = mesh.devices.flat[0], jax.process_count()
    axes = " x ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
    impls = kernel_impls(model, bool(config.data.document_mask), config.data.seq_len)
    kernels = ", ".join(f"{kind} {impl}" for kind, impl in impls.items())
    data, num_steps = config.data, config.train.num_steps
    per_step = data.batch_size * data.seq_len
    return [
        f"experiment: {name}: {config.description}" if name else f"experiment: {config.description}",
        *size_lines(model, data.seq_len),
        f"devices: {mesh.size} x {device.device_kind} in {processes} process{'es' if processes > 1 else ''}, "
        f"backend {jax.default_backend()}; mesh {axes}",
        f"kernels: {kernels}",
        f"tokens: {per_step:,} per step ({data.batch_size} x {data.seq_len}), {per_step * num_steps:,} over "
        f"{num_steps:,} steps",
    ]
