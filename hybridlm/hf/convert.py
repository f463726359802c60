"""The mapping between our models and Hugging Face's `olmo_hybrid` / `olmo3` checkpoints: config fields both ways,
and for every tensor its Hugging Face name, where it lives in our params and how its layout changes.

Our params are the nested dict `nnx.to_pure_dict(nnx.state(model, nnx.Param))`; the layer stack is stored stacked, so
`params["groups"]["blocks"][i]` is block i of `layer_pattern`, each leaf with a leading axis `num_groups`, and Hugging
Face layer `l` is group `l // len(layer_pattern)`, block `l % len(layer_pattern)`.

Layouts (ours -> Hugging Face):
- linear: kernel [in, out] -> weight [out, in] (the transpose);
- conv: depthwise causal conv [kernel, channels] -> [channels, 1, kernel] (`weight[c, 0, k]` multiplies the input
  `kernel - 1 - k` steps back, as ours does with `weight[k, c]`);
- same: norms, embeddings, A_log and dt_bias keep their shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from hybridlm.model.config import ATTENTION, GDN, PRE_NORM, SLIDING_ATTENTION, ModelConfig

OLMO_HYBRID = "olmo_hybrid"
OLMO3 = "olmo3"
MODEL_TYPES = (OLMO_HYBRID, OLMO3)
ARCHITECTURES = {OLMO_HYBRID: "OlmoHybridForCausalLM", OLMO3: "Olmo3ForCausalLM"}
HF_LAYER_TYPES = {GDN: "linear_attention", ATTENTION: "full_attention", SLIDING_ATTENTION: "sliding_attention"}
OUR_LAYER_TYPES = {hf: ours for ours, hf in HF_LAYER_TYPES.items()}
HF_MODEL_LAYER_TYPES = {
    OLMO_HYBRID: ("linear_attention", "full_attention"),
    OLMO3: ("sliding_attention", "full_attention"),
}
HF_GDN_NORM_EPS = 1e-5  # OlmoHybridGatedDeltaNet builds o_norm with eps=1e-5 whatever config.json says
HF_DEFAULT_ROPE_THETA = {OLMO_HYBRID: 10_000.0, OLMO3: 500_000.0}  # what transformers uses when none is given
HF_DEFAULT_NORM_EPS = {OLMO_HYBRID: 1e-6, OLMO3: 1e-5}

_UNUSED_ROPE_THETA = 500_000.0  # config.model.rope_theta of a model without RoPE (must be positive, never used)

LINEAR, CONV, SAME = "linear", "conv", "same"

_GDN_TENSORS = (
    # (Hugging Face suffix after "model.layers.{l}.", our path inside the block, layout)
    ("input_layernorm.weight", ("gdn_norm", "weight"), SAME),
    ("linear_attn.q_proj.weight", ("gdn", "q_proj", "kernel"), LINEAR),
    ("linear_attn.k_proj.weight", ("gdn", "k_proj", "kernel"), LINEAR),
    ("linear_attn.v_proj.weight", ("gdn", "v_proj", "kernel"), LINEAR),
    ("linear_attn.a_proj.weight", ("gdn", "a_proj", "kernel"), LINEAR),
    ("linear_attn.b_proj.weight", ("gdn", "b_proj", "kernel"), LINEAR),
    ("linear_attn.g_proj.weight", ("gdn", "g_proj", "kernel"), LINEAR),
    ("linear_attn.o_proj.weight", ("gdn", "o_proj", "kernel"), LINEAR),
    ("linear_attn.q_conv1d.weight", ("gdn", "q_conv", "weight"), CONV),
    ("linear_attn.k_conv1d.weight", ("gdn", "k_conv", "weight"), CONV),
    ("linear_attn.v_conv1d.weight", ("gdn", "v_conv", "weight"), CONV),
    ("linear_attn.A_log", ("gdn", "A_log"), SAME),
    ("linear_attn.dt_bias", ("gdn", "dt_bias"), SAME),
    ("linear_attn.o_norm.weight", ("gdn", "o_norm"), SAME),
    ("post_attention_layernorm.weight", ("mlp_norm", "weight"), SAME),
)
_ATTENTION_TENSORS = (
    ("self_attn.q_proj.weight", ("attention", "q_proj", "kernel"), LINEAR),
    ("self_attn.k_proj.weight", ("attention", "k_proj", "kernel"), LINEAR),
    ("self_attn.v_proj.weight", ("attention", "v_proj", "kernel"), LINEAR),
    ("self_attn.o_proj.weight", ("attention", "o_proj", "kernel"), LINEAR),
    ("self_attn.q_norm.weight", ("attention", "q_norm", "weight"), SAME),
    ("self_attn.k_norm.weight", ("attention", "k_norm", "weight"), SAME),
    ("post_attention_layernorm.weight", ("post_attention_norm", "weight"), SAME),
    ("post_feedforward_layernorm.weight", ("post_mlp_norm", "weight"), SAME),
)
_MLP_TENSORS = (
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), LINEAR),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), LINEAR),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), LINEAR),
)


class HFFormatError(ValueError):
    """A Hugging Face directory, config field or tensor we cannot read or write; the message names it and the file."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One Hugging Face tensor: `params[path][group]` (or `params[path]` when group is None) in layout `layout`."""

    hf_name: str
    path: tuple[Any, ...]
    group: int | None
    layout: str


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Token ids written to config.json and generation_config.json (None: the field is null)."""

    bos: int | None
    eos: int | None
    pad: int | None


def tensor_maps(config: ModelConfig) -> list[TensorMap]:
    """Every tensor of the Hugging Face checkpoint, in file order: embeddings, layers 0..L-1, final norm, LM head.

    Raises HFFormatError for post-norm GDN blocks: transformers' linear-attention layers normalise their inputs.
    """
    _require(
        GDN not in config.layer_pattern or config.gdn_norm == PRE_NORM,
        f"config.model.gdn_norm={config.gdn_norm!r}: transformers' olmo_hybrid has only pre-norm GDN layers "
        f"(h = x + gdn(norm(x))); only gdn_norm={PRE_NORM!r} models convert",
    )
    maps = [TensorMap("model.embed_tokens.weight", ("embed", "embedding"), None, SAME)]
    period = len(config.layer_pattern)
    for layer, kind in enumerate(config.layer_types):
        group, index = divmod(layer, period)
        mixer = _GDN_TENSORS if kind == GDN else _ATTENTION_TENSORS
        for suffix, path, layout in mixer + _MLP_TENSORS:
            maps.append(TensorMap(f"model.layers.{layer}.{suffix}", ("groups", "blocks", index, *path), group, layout))
    maps.append(TensorMap("model.norm.weight", ("final_norm", "weight"), None, SAME))
    maps.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), None, LINEAR))
    return maps


def to_hf_layout(layout: str, ours: np.ndarray) -> np.ndarray:
    """Our array (one group's slice for stacked leaves) -> the Hugging Face array, C-contiguous."""
    if layout == LINEAR:
        return np.ascontiguousarray(ours.T)
    if layout == CONV:
        return np.ascontiguousarray(ours.T[:, None, :])
    return np.ascontiguousarray(ours)


def from_hf_layout(layout: str, hf: np.ndarray) -> np.ndarray:
    """The Hugging Face array -> ours (inverse of `to_hf_layout`)."""
    if layout == LINEAR:
        return np.ascontiguousarray(hf.T)
    if layout == CONV:
        return np.ascontiguousarray(hf[:, 0, :].T)
    return np.ascontiguousarray(hf)


def hf_shape(layout: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face shape of a tensor whose shape here (without the group axis) is `our_shape`."""
    if layout == LINEAR:
        return tuple(reversed(our_shape))
    if layout == CONV:
        kernel, channels = our_shape
        return (channels, 1, kernel)
    return tuple(our_shape)


def leaf(tree: dict[str, Any], path: tuple[Any, ...]) -> Any:
    """tree[path[0]][path[1]]..."""
    for key in path:
        tree = tree[key]
    return tree


def tensor_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of a tensor of `shape` and `dtype`."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def hf_model_type(config: ModelConfig) -> str:
    """olmo_hybrid for stacks with GDN layers, olmo3 for attention-only ones; raises HFFormatError for the rest."""
    kinds = set(config.layer_pattern)
    if GDN not in kinds:
        _require(config.use_rope, "config.model.use_rope=False: olmo3 always applies RoPE; set use_rope=True")
        return OLMO3
    _require(
        ATTENTION in kinds,
        f"config.model.layer_pattern={config.layer_pattern} has no 'attn' layer; transformers' olmo_hybrid needs at "
        "least one full_attention layer (OlmoHybridConfig.validate_architecture), and olmo3 has no GDN layers",
    )
    _require(
        SLIDING_ATTENTION not in kinds,
        f"config.model.layer_pattern={config.layer_pattern} mixes GDN and 'swa' layers; olmo_hybrid has no "
        "sliding-window attention and olmo3 no GDN",
    )
    _require(
        config.gdn.norm_eps == HF_GDN_NORM_EPS,
        f"config.model.gdn.norm_eps={config.gdn.norm_eps}: transformers' olmo_hybrid fixes the GDN output norm's eps "
        f"at {HF_GDN_NORM_EPS}",
    )
    return OLMO_HYBRID


def to_hf_config(config: ModelConfig, *, dtype: str, tokens: SpecialTokens) -> dict[str, Any]:
    """config.json for `config` ("float32" or "bfloat16" weights); raises HFFormatError if it cannot be represented."""
    model_type = hf_model_type(config)
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": tokens.bos,
        "eos_token_id": tokens.eos,
        "pad_token_id": tokens.pad,
        "layer_types": [HF_LAYER_TYPES[kind] for kind in config.layer_types],
        "dtype": dtype,
    }
    rope = {"rope_type": "default", "rope_theta": config.rope_theta if config.use_rope else None}
    if model_type == OLMO3:
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": dict(rope)}
        hf["sliding_window"] = config.sliding_window
        return hf
    gdn = config.gdn
    hf["rope_parameters"] = rope
    hf.update(
        linear_num_key_heads=gdn.num_key_heads,
        linear_num_value_heads=gdn.num_value_heads,
        linear_key_head_dim=gdn.key_head_dim,
        linear_value_head_dim=gdn.value_head_dim,
        linear_conv_kernel_dim=gdn.conv_kernel,
        linear_allow_neg_eigval=gdn.allow_neg_eigval,
    )
    return hf


def generation_config(tokens: SpecialTokens) -> dict[str, Any]:
    """generation_config.json: the special tokens that generation stops at and pads with."""
    ids = {"bos_token_id": tokens.bos, "eos_token_id": tokens.eos, "pad_token_id": tokens.pad}
    return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


def model_fields_from_hf(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The architecture fields of `config.model` (gdn included) for the checkpoint whose config.json is `hf`.

    Missing fields take transformers' defaults. Raises HFFormatError naming the field of `source` (the config.json
    path) that our model cannot represent.
    """
    model_type = hf.get("model_type")
    _require(
        model_type in MODEL_TYPES,
        f"{source}: model_type={model_type!r} is not one we read; expected one of {MODEL_TYPES}",
    )
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        _require(name in hf, f"{source}: the field {name!r} is missing")
    _require(hf.get("hidden_act", "silu") == "silu", f"{source}: hidden_act={hf.get('hidden_act')!r}; ours is silu")
    _require(not hf.get("attention_bias", False), f"{source}: attention_bias=true; our projections have no bias")
    _require(
        not hf.get("tie_word_embeddings", False),
        f"{source}: tie_word_embeddings=true; our model keeps a separate LM head",
    )
    num_layers, num_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    layer_types = hf.get("layer_types") or _default_layer_types(model_type, num_layers)
    _require(
        len(layer_types) == num_layers,
        f"{source}: layer_types has {len(layer_types)} entries but num_hidden_layers={num_layers}",
    )
    unknown = sorted(set(layer_types) - set(HF_MODEL_LAYER_TYPES[model_type]))
    _require(
        not unknown, f"{source}: layer_types has {unknown}; {model_type} layers are {HF_MODEL_LAYER_TYPES[model_type]}"
    )
    use_rope, rope_theta = _rope(hf, model_type, layer_types, source)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    fields = {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "num_layers": num_layers,
        "layer_pattern": _period([OUR_LAYER_TYPES[t] for t in layer_types]),
        "num_heads": num_heads,
        "num_kv_heads": hf.get("num_key_value_heads") or num_heads,
        "head_dim": head_dim,
        "mlp_hidden": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 65_536 if model_type == OLMO_HYBRID else 2048),
        "use_rope": use_rope,
        "rope_theta": rope_theta,
        "norm_eps": hf.get("rms_norm_eps", HF_DEFAULT_NORM_EPS[model_type]),
        "init_std": hf.get("initializer_range", 0.02),
        "gdn": _gdn_fields(hf, num_heads),
    }
    if model_type == OLMO_HYBRID:
        fields["gdn_norm"] = PRE_NORM  # OlmoHybridLinearAttentionDecoderLayer normalises its inputs
    if model_type == OLMO3:
        window = hf.get("sliding_window", 4096)
        _require(
            window is not None or "sliding_attention" not in layer_types,
            f"{source}: sliding_window is null but layer_types has sliding_attention layers",
        )
        fields["sliding_window"] = window if window is not None else 4096
    return fields


def _default_layer_types(model_type: str, num_layers: int) -> list[str]:
    """transformers' default layer_types: every fourth layer full attention, the others linear / sliding."""
    other = "linear_attention" if model_type == OLMO_HYBRID else "sliding_attention"
    types = ["full_attention" if i % 4 == 3 else other for i in range(num_layers)]
    if model_type == OLMO_HYBRID and "full_attention" not in types:
        types[-1] = "full_attention"
    return types


def _rope(hf: dict[str, Any], model_type: str, layer_types: list[str], source: str) -> tuple[bool, float]:
    """(use_rope, rope_theta) as transformers reads them: olmo_hybrid has one `rope_parameters` dict (rope_theta
    null means no RoPE), olmo3 one per layer type (all must agree here: our model has a single theta)."""
    default = {"rope_type": "default", "rope_theta": hf.get("rope_theta", HF_DEFAULT_ROPE_THETA[model_type])}
    params = hf.get("rope_parameters") or (
        default if model_type == OLMO_HYBRID else {"full_attention": default, "sliding_attention": default}
    )
    if model_type == OLMO_HYBRID:
        per_type = {"rope_parameters": params}
    else:
        per_type = {f"rope_parameters.{t}": params.get(t) or default for t in sorted(set(layer_types))}
    thetas = set()
    for field, rope in per_type.items():
        _require(
            rope.get("rope_type", "default") == "default",
            f"{source}: {field}.rope_type={rope.get('rope_type')!r}; only 'default' RoPE is supported",
        )
        thetas.add(rope.get("rope_theta", default["rope_theta"]))
    _require(len(thetas) == 1, f"{source}: {', '.join(per_type)} have different rope_theta {sorted(thetas)}")
    theta = thetas.pop()
    if theta is None:
        _require(model_type == OLMO_HYBRID, f"{source}: rope_theta is null; olmo3 always applies RoPE")
        return False, _UNUSED_ROPE_THETA
    return True, float(theta)


def _gdn_fields(hf: dict[str, Any], num_heads: int) -> dict[str, Any]:
    """config.model.gdn from the linear_* fields, with OlmoHybridConfig's defaults (also filled in for olmo3)."""
    key_heads = hf.get("linear_num_key_heads") or num_heads
    key_head_dim = hf.get("linear_key_head_dim") or int(0.75 * hf["hidden_size"] / key_heads)
    return {
        "num_key_heads": key_heads,
        "num_value_heads": hf.get("linear_num_value_heads") or num_heads,
        "key_head_dim": key_head_dim,
        "value_head_dim": hf.get("linear_value_head_dim") or 2 * key_head_dim,
        "conv_kernel": hf.get("linear_conv_kernel_dim", 4),
        "allow_neg_eigval": hf.get("linear_allow_neg_eigval", True),
        "norm_eps": HF_GDN_NORM_EPS,
    }


def _period(layer_types: list[str]) -> tuple[str, ...]:
    """The shortest pattern whose repetition gives `layer_types`."""
    n = len(layer_types)
    for length in range(1, n):
        if n % length == 0 and layer_types == layer_types[:length] * (n // length):
            return tuple(layer_types[:length])
    return tuple(layer_types)


def _require(ok: Any, message: str) -> None:
    if not ok:
        raise HFFormatError(message)
