"""Import: a Hugging Face `olmo_hybrid` / `olmo3` directory -> our run config and params, tensor by tensor.

Reads the released layout (separate `q_conv1d` / `k_conv1d` / `v_conv1d`, `input_layernorm` and
`post_attention_layernorm` on GDN layers) and what transformers 5.24 also loads: the fused `linear_attn.conv1d.weight`
of its model class, and what its `save_pretrained` writes for olmo_hybrid (norms renamed `attention_layer_norm` /
`feedforward_layer_norm`, the fused conv cut into three equal parts whatever the key and value widths).
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import jax
import numpy as np
from ml_collections import config_dict
from safetensors import SafetensorError, safe_open

from hybridlm import config_defaults
from hybridlm.hf.convert import (
    CONV,
    OLMO_HYBRID,
    HFFormatError,
    from_hf_layout,
    hf_shape,
    leaf,
    model_fields_from_hf,
    tensor_maps,
)
from hybridlm.model import ModelConfig, abstract_params

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# The renames transformers' conversion mapping applies when it loads olmo_hybrid (and reverses in save_pretrained).
_RENAMES = {
    OLMO_HYBRID: (("attention_layer_norm", "input_layernorm"), ("feedforward_layer_norm", "post_attention_layernorm"))
}
_IGNORED_PREFIXES = ("mtp.",)  # OlmoHybridPreTrainedModel._keys_to_ignore_on_load_unexpected: multi-token heads
# Olmo midtraining (the recipe for continuing from a released checkpoint): 100B tokens, lr 2.07e-4 linear to 0.
_CONTINUE_TOKENS, _CONTINUE_LR, _CONTINUE_SEQ_LEN, _CONTINUE_BATCH = 100e9, 2.07e-4, 8192, 512
_ABSENT = object()  # a field the checkpoint's architecture does not set


def read_hf_config(hf_dir: str | pathlib.Path) -> dict[str, Any]:
    """The parsed config.json of a Hugging Face directory; raises HFFormatError if it is missing or not JSON."""
    path = pathlib.Path(hf_dir) / CONFIG_FILE
    if not path.is_file():
        raise HFFormatError(f"{path} does not exist: {hf_dir} is not a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path} is not valid JSON: {e}") from None


def model_config_from_hf(hf_dir: str | pathlib.Path, **overrides: Any) -> ModelConfig:
    """Our ModelConfig for the checkpoint in `hf_dir`; `overrides` sets non-architecture fields (dtype, ...)."""
    model = run_config_from_hf(hf_dir).model
    model.update(overrides)
    return ModelConfig.from_config(model)


def run_config_from_hf(hf_dir: str | pathlib.Path) -> config_dict.ConfigDict:
    """A full run config (as an experiment's `get_config()`) that continues training the checkpoint in `hf_dir`.

    The model is the checkpoint's architecture with our default training fields (bf16 compute, fp32 params, remat,
    GDN chunk 64); the rest is the Olmo midtraining recipe: 512 x min(8192, max_seq_len) tokens a step, lr 2.07e-4
    decaying linearly to 0 over 100B tokens, no warmup; `init_from_hf` names `hf_dir`.
    """
    fields = model_fields_from_hf(read_hf_config(hf_dir), str(pathlib.Path(hf_dir) / CONFIG_FILE))
    gdn = fields["gdn"]
    model = config_defaults.model_config(
        vocab_size=fields["vocab_size"],
        d_model=fields["d_model"],
        num_layers=fields["num_layers"],
        layer_pattern=fields["layer_pattern"],
        num_heads=fields["num_heads"],
        mlp_hidden=fields["mlp_hidden"],
        max_seq_len=fields["max_seq_len"],
        gdn=config_defaults.gdn_config(gdn["num_key_heads"], gdn["key_head_dim"], gdn["value_head_dim"]),
    )
    set_architecture(model, fields)
    seq_len = min(_CONTINUE_SEQ_LEN, fields["max_seq_len"])
    config = config_defaults.default_run_config(
        model,
        description=f"continued training of the Hugging Face checkpoint {hf_dir}",
        seq_len=seq_len,
        batch_size=_CONTINUE_BATCH,
        lr=_CONTINUE_LR,
        warmup_steps=0,
        num_steps=int(_CONTINUE_TOKENS // (_CONTINUE_BATCH * seq_len)),
    )
    config.optim.schedule, config.optim.final_lr_ratio = "linear", 0.0
    config.init_from_hf = str(hf_dir)
    return config


def with_hf_architecture(config: config_dict.ConfigDict, hf_dir: str | pathlib.Path) -> config_dict.ConfigDict:
    """A copy of run config `config` whose model architecture is that of the checkpoint in `hf_dir`.

    Architecture fields (sizes, layer pattern, RoPE, norms' eps, GDN shape, and for olmo_hybrid the GDN blocks'
    pre-norm) come from its config.json; the training fields of `config.model` (dtype, param_dtype, remat,
    scan_layers, gdn.chunk_size, gdn.impl) are kept. Raises HFFormatError, before anything is built, when the
    config.json or a safetensors file cannot be read: a shard missing or truncated, or no weights at all.
    """
    config = copy.deepcopy(config)
    hf_config = read_hf_config(hf_dir)
    set_architecture(config.model, model_fields_from_hf(hf_config, str(pathlib.Path(hf_dir) / CONFIG_FILE)))
    _Tensors(pathlib.Path(hf_dir), hf_config["model_type"])  # opens every weights file's header
    return config


def check_architecture_overrides(config: config_dict.ConfigDict, keys: list[str]) -> None:
    """Raises HFFormatError when one of `keys` (config keys a command line set, e.g. "model.num_layers") is an
    architecture field whose value in `config` differs from the checkpoint's in `config.init_from_hf`, which
    `with_hf_architecture` would put in its place."""
    hf_dir = config.init_from_hf
    fields = model_fields_from_hf(read_hf_config(hf_dir), str(pathlib.Path(hf_dir) / CONFIG_FILE))
    for key in keys:
        section, *path = key.split(".")
        theirs = _field(fields, path) if section == "model" else _ABSENT
        if theirs is _ABSENT or isinstance(theirs, dict):
            continue
        ours = _field(config.model, path)
        if _plain(ours) != _plain(theirs):
            raise HFFormatError(
                f"--config.{key}={ours!r} conflicts with config.init_from_hf={hf_dir}, whose config.json gives "
                f"{'.'.join(path)}={theirs!r}: the checkpoint fixes the architecture; drop the override, or train "
                "from scratch without init_from_hf"
            )


def _field(tree: Any, path: list[str]) -> Any:
    """The value at `path` (field names) in nested mappings, or _ABSENT."""
    for name in path:
        if not hasattr(tree, "keys") or name not in tree:
            return _ABSENT
        tree = tree[name]
    return tree


def _plain(value: Any) -> Any:
    """`value` with lists as tuples, so that a layer pattern compares equal however it was written."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def set_architecture(model: config_dict.ConfigDict, fields: dict[str, Any]) -> None:
    """Writes `fields` (from `model_fields_from_hf`) into a `config.model` ConfigDict in place."""
    for name, value in fields.items():
        if name == "gdn":
            model.gdn.update(value)
        else:
            model[name] = value


def load_hf_params(hf_dir: str | pathlib.Path, config: ModelConfig) -> dict[str, Any]:
    """Our params (nested dict of numpy arrays in `config.param_dtype`) from the safetensors files in `hf_dir`.

    Reads one tensor at a time into preallocated stacked arrays, so memory holds one copy of the model. Raises
    HFFormatError naming the tensor and file for a missing, mis-shaped or unexpected tensor.
    """
    model_type = read_hf_config(hf_dir)["model_type"]
    tensors = _Tensors(pathlib.Path(hf_dir), model_type)
    abstract = abstract_params(config)
    params = jax.tree.map(lambda x: np.empty(x.shape, config.params_dtype), abstract)
    used: set[str] = set()
    convs: dict[str, np.ndarray] = {}
    for tensor in tensor_maps(config):
        target = leaf(params, tensor.path)
        shape = hf_shape(tensor.layout, target.shape[1:] if tensor.group is not None else target.shape)
        if tensor.layout == CONV:
            if tensor.hf_name not in convs:
                convs = _gdn_convs(tensors, tensor.hf_name.rsplit("linear_attn.", 1)[0], config, used)
            value = convs[tensor.hf_name]
        else:
            value = tensors.read(tensor.hf_name)
            used.add(tensor.hf_name)
        if tuple(value.shape) != shape:
            raise HFFormatError(
                f"{tensors.file_of(tensor.hf_name)}: tensor {tensor.hf_name} has shape {list(value.shape)}, the model "
                f"described by config.json needs {list(shape)}"
            )
        ours = from_hf_layout(tensor.layout, value)
        if tensor.group is None:
            target[...] = ours
        else:
            target[tensor.group] = ours
    unexpected = sorted(n for n in tensors.names() - used if not n.startswith(_IGNORED_PREFIXES))
    if unexpected:
        raise HFFormatError(
            f"{hf_dir} holds {len(unexpected)} tensors the model described by its config.json does not have, e.g. "
            f"{unexpected[:3]} (in {tensors.file_of(unexpected[0])})"
        )
    return params


def _gdn_convs(tensors: _Tensors, prefix: str, config: ModelConfig, used: set[str]) -> dict[str, np.ndarray]:
    """The q, k and v conv weights ([width, 1, kernel] each) of the GDN layer whose names start with `prefix`.

    Takes the fused `linear_attn.conv1d.weight` [2 * key_width + value_width, 1, kernel] if present, else concatenates
    `q_conv1d`, `k_conv1d` and `v_conv1d` along channels (wherever they were cut) and splits at the key width.
    """
    gdn = config.gdn
    key_width, value_width = gdn.num_key_heads * gdn.key_head_dim, gdn.num_value_heads * gdn.value_head_dim
    names = [f"{prefix}linear_attn.{x}_conv1d.weight" for x in "qkv"]
    fused_name = f"{prefix}linear_attn.conv1d.weight"
    sources = [fused_name] if fused_name in tensors.names() else names
    missing = [n for n in sources if n not in tensors.names()]
    if missing:
        raise HFFormatError(f"{tensors.where}: tensor {missing[0]} is missing (nor is {fused_name} there)")
    parts = [tensors.read(n) for n in sources]
    used.update(sources)
    expected = (2 * key_width + value_width, 1, gdn.conv_kernel)
    if any(p.ndim != 3 or p.shape[1:] != expected[1:] for p in parts) or sum(p.shape[0] for p in parts) != expected[0]:
        raise HFFormatError(
            f"{tensors.file_of(sources[0])}: tensors {sources} have shapes {[list(p.shape) for p in parts]}; the "
            f"model described by config.json needs [{expected[0]}, 1, {expected[2]}] channels in all (q, k, v widths "
            f"{key_width}, {key_width}, {value_width})"
        )
    q, k, v = np.split(np.concatenate(parts, axis=0), [key_width, 2 * key_width], axis=0)
    return dict(zip(names, (q, k, v)))


class _Tensors:
    """The tensors of a Hugging Face directory (one `model.safetensors` or shards listed in the index), by name after
    transformers' load-time renames; each read opens the file and copies out one tensor."""

    def __init__(self, hf_dir: pathlib.Path, model_type: str):
        self.where = hf_dir
        renames = _RENAMES.get(model_type, ())
        self._stored: dict[str, tuple[pathlib.Path, str]] = {}
        for stored, path in self._stored_names(hf_dir).items():
            name = stored
            for old, new in renames:
                name = name.replace(old, new)
            self._stored[name] = (path, stored)

    @staticmethod
    def _stored_names(hf_dir: pathlib.Path) -> dict[str, pathlib.Path]:
        """Tensor name -> its file, for every tensor the index (or the single file) lists; opens each file's header
        and checks that it holds the tensors the index puts there."""
        index, single = hf_dir / INDEX_FILE, hf_dir / WEIGHTS_FILE
        if index.is_file():
            try:
                contents = json.loads(index.read_text())
            except json.JSONDecodeError as e:
                raise HFFormatError(f"{index} is not valid JSON ({e}); download or export it again") from None
            weight_map = contents.get("weight_map") if isinstance(contents, dict) else None
            if not isinstance(weight_map, dict):
                raise HFFormatError(f"{index} has no weight_map")
            missing = sorted({f for f in weight_map.values() if not (hf_dir / f).is_file()})
            if missing:
                raise HFFormatError(
                    f"{index} lists the file {missing[0]}, which is not in {hf_dir}; download or export it again"
                )
            held = {file: _tensor_names(hf_dir / file) for file in set(weight_map.values())}
            for name, file in weight_map.items():
                if name not in held[file]:
                    raise HFFormatError(f"{hf_dir / file}: tensor {name} is missing (the index lists it in this file)")
            return {name: hf_dir / file for name, file in weight_map.items()}
        if single.is_file():
            return {name: single for name in _tensor_names(single)}
        raise HFFormatError(
            f"{hf_dir} has neither {WEIGHTS_FILE} nor {INDEX_FILE}: it holds no weights; download or export the "
            "checkpoint again"
        )

    def names(self) -> set[str]:
        return set(self._stored)

    def file_of(self, name: str) -> pathlib.Path:
        return self._stored[name][0] if name in self._stored else self.where

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as stored (bf16 comes back as ml_dtypes.bfloat16)."""
        if name not in self._stored:
            raise HFFormatError(f"{self.where}: tensor {name} is missing")
        path, stored = self._stored[name]
        with safe_open(path, framework="np") as f:
            return f.get_tensor(stored)


def _tensor_names(path: pathlib.Path) -> set[str]:
    """The names of the tensors in the safetensors file `path`, from its header; raises HFFormatError if the file
    cannot be read (truncated, or not safetensors)."""
    try:
        with safe_open(path, framework="np") as f:
            return set(f.keys())
    except SafetensorError as e:
        raise HFFormatError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated: download or export it again"
        ) from None
