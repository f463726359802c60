"""Training FLOPs per token of a model, and the peak FLOP/s of accelerators, for model FLOPs utilisation (MFU).

FLOPs per token of one training step (forward and backward), for sequence length T:

    6 * N_matmul                                              (every projection, the LM head included)
  + 12 * H * D * T_seen        per attention layer            (scores and values, forward x3; T_seen = T for full
                                                               attention, min(T, window) for sliding windows)
  + 3 * H_v * (6 C K + 4 C V + 6 K V + C^2 / 3)  per GDN layer (the chunked form with chunks of C: the intra-chunk
                                                               products and the state's read and update, forward x3)

N_matmul counts the kernels of the linear maps; the embedding (a lookup), norms and the GDN convolutions, gates
and decays are left out. Attention follows PaLM's convention (appendix B: 6N + 12 L H Q T, no discount for the
causal mask), as OLMo-core and torchtitan report MFU, so the figures compare with theirs.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from hybridlm.model import ModelConfig, abstract_model
from hybridlm.model.config import GDN, SLIDING_ATTENTION

# Dense bfloat16 peak FLOP/s by the start of `jax.Device.device_kind` (vendor datasheets), the denominator of MFU;
# the longest matching prefix wins ("TPU v5 lite" is v5e, "TPU v5" v5p, "TPU v6 lite" v6e).
PEAK_FLOPS = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA GH200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


def matmul_params(config: ModelConfig) -> int:
    """Weights of every linear map (kernels named "kernel"), from abstract shapes."""
    params = nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param))
    return sum(math.prod(value.shape) for path, value in params if path[-1] == "kernel")


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length `seq_len`; see the module docstring."""
    total = 6.0 * matmul_params(config)
    gdn = config.gdn
    chunk, key_dim, value_dim = gdn.chunk_size, gdn.key_head_dim, gdn.value_head_dim
    gdn_head = 6 * chunk * key_dim + 4 * chunk * value_dim + 6 * key_dim * value_dim + chunk**2 / 3
    for kind in config.layer_types:
        if kind == GDN:
            total += 3 * gdn.num_value_heads * gdn_head
        else:
            seen = min(seq_len, config.sliding_window) if kind == SLIDING_ATTENTION else seq_len
            total += 12 * config.num_heads * config.head_dim * seen
    return total


def peak_flops(device: jax.Device) -> float | None:
    """Dense bfloat16 peak FLOP/s of `device`, or None for a kind not in PEAK_FLOPS (e.g. the CPU)."""
    kind = device.device_kind
    matches = [name for name in PEAK_FLOPS if kind.startswith(name)]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None
