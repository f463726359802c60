"""Causal attention through cuDNN's fused flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`).

cuDNN takes the causal mask and a left window but no per-token document ids, so it serves rows without document
masking; packed documents go to the Pallas kernel (gpu.py). It needs an NVIDIA GPU, float16 or bfloat16 inputs and a
head dim that is a multiple of 8, at most 256 (128 before Hopper).
"""

from __future__ import annotations

import jax

DTYPES = ("float16", "bfloat16")
MAX_HEAD_DIM = 256


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, window: int | None, scale: float
) -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, T, H_kv, D] -> [B, T, H, D]. A window of w keeps keys j with i - w < j <= i."""
    if segment_ids is not None:
        raise ValueError(
            "attention: impl='cudnn' has no document masking; use impl='pallas_gpu' (or 'auto') with segment_ids, "
            "or set config.data.document_mask=False"
        )
    if q.dtype.name not in DTYPES or q.shape[-1] % 8 or q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"attention: impl='cudnn' takes {DTYPES} inputs with a head dim that is a multiple of 8 up to "
            f"{MAX_HEAD_DIM}; got {q.dtype.name} and head dim {q.shape[-1]} (use impl='pallas_gpu' or 'auto')"
        )
    local_window = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=True, local_window_size=local_window, implementation="cudnn"
    )
