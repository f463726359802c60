"""Export: our params -> a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads.

Writes config.json (olmo_hybrid or olmo3), the weights as safetensors in the released checkpoints' names and layout
(shards of at most `max_shard_bytes` with `model.safetensors.index.json` when there is more than one),
generation_config.json and, when the run used a Hugging Face tokenizer, its files. Tensors are converted one at a time
and written a shard at a time, so memory holds the model once plus one shard. A run's weights are written in its
parameter dtype unless another is asked for.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_dtypes
import numpy as np
from ml_collections import config_dict
from safetensors.numpy import save_file

from hybridlm import api
from hybridlm.data.tokenizer import BYTE, ByteTokenizer, load_tokenizer, tokenizer_file
from hybridlm.hf.convert import (
    HFFormatError,
    SpecialTokens,
    TensorMap,
    generation_config,
    hf_shape,
    leaf,
    tensor_bytes,
    tensor_maps,
    to_hf_config,
    to_hf_layout,
)
from hybridlm.hf.load import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE
from hybridlm.model import ModelConfig, abstract_params

WEIGHT_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
MAX_SHARD_BYTES = 5 * 10**9
GENERATION_CONFIG_FILE = "generation_config.json"


def export_workdir(
    workdir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> pathlib.Path:
    """Exports the checkpoint at `step` (default: the latest) of the training run in `workdir` to `out_dir`, its
    weights in `dtype` ("bfloat16" or "float32"; None: the run's parameter dtype, see `weight_dtype`).

    Special tokens are the tokenizer's: the Hugging Face tokenizer named by the run's `config.data.tokenizer` (its
    files are saved too), else the built-in byte tokenizer's eos 256 and pad 257. Returns `out_dir`.
    """
    _check_out_dir(pathlib.Path(out_dir))  # before the checkpoint is read
    checkpoint = api.load_workdir(workdir, step)
    data = checkpoint.run_config.data
    tokenizer_name = data.get("tokenizer", BYTE)
    tokenizer = None
    if tokenizer_name not in (None, BYTE):
        tokenizer = _load_tokenizer(tokenizer_name, data.get("eos_token"), checkpoint.model_config.vocab_size)
    if tokenizer is None:
        tokens = SpecialTokens(bos=None, eos=ByteTokenizer.eos_id, pad=ByteTokenizer.pad_id)
    else:
        tokens = SpecialTokens(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    export_params(
        checkpoint.params,
        checkpoint.model_config,
        out_dir,
        dtype=weight_dtype(checkpoint.run_config, dtype),
        tokens=tokens,
        max_shard_bytes=max_shard_bytes,
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return pathlib.Path(out_dir)


def weight_dtype(run_config: config_dict.ConfigDict, dtype: str | None) -> str:
    """The dtype an export of a run writes: `dtype`, or when None the run's `config.model.param_dtype` (the dtype it
    trained its weights in, so a float32 run exports float32)."""
    return dtype or run_config.model.param_dtype


def export_params(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str | pathlib.Path,
    *,
    dtype: str,
    tokens: SpecialTokens,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[pathlib.Path]:
    """Writes config.json, generation_config.json and the weights of `params` (our nested dict of numpy or jax
    arrays) as `dtype` ("bfloat16" or "float32") into `out_dir`, which must be empty or absent.

    Raises HFFormatError (before writing anything) if `config` has no Hugging Face equivalent or a tensor of `params`
    has the wrong shape. Returns the safetensors files written.
    """
    if dtype not in WEIGHT_DTYPES:
        raise HFFormatError(f"weight dtype {dtype!r} is not one of {tuple(WEIGHT_DTYPES)}")
    hf_config = to_hf_config(config, dtype=dtype, tokens=tokens)
    maps = tensor_maps(config)
    shapes = _checked_shapes(params, config, maps)
    out = pathlib.Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    weight_dtype = WEIGHT_DTYPES[dtype]
    shards = _plan_shards(maps, shapes, weight_dtype, max_shard_bytes)
    files = [out / _shard_name(i, len(shards)) for i in range(len(shards))]
    for shard, path in zip(shards, files):
        arrays = {m.hf_name: _hf_array(params, m).astype(weight_dtype) for m in shard}
        save_file(arrays, str(path), metadata={"format": "pt"})
        del arrays  # else the next shard is built while this one is still alive
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(tensor_bytes(shapes[m.hf_name], weight_dtype) for m in maps)},
            "weight_map": {m.hf_name: path.name for shard, path in zip(shards, files) for m in shard},
        }
        _write_json(out / INDEX_FILE, index)
    _write_json(out / CONFIG_FILE, hf_config)
    _write_json(out / GENERATION_CONFIG_FILE, generation_config(tokens))
    return files


def _check_out_dir(out: pathlib.Path) -> None:
    """Raises HFFormatError unless `out` is an empty directory or can be made one."""
    path = out.absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = f"{out} is a file" if existing == path else f"{existing}, a parent of {out}, is a file"
        raise HFFormatError(f"{what}, not a directory; export into a new directory")
    if existing == path and any(path.iterdir()):
        raise HFFormatError(f"{out} is not empty; export into a new directory")


def _hf_array(params: dict[str, Any], tensor: TensorMap) -> np.ndarray:
    """One Hugging Face tensor from our params (copies only that group's slice to the host)."""
    value = leaf(params, tensor.path)
    return to_hf_layout(tensor.layout, np.asarray(value if tensor.group is None else value[tensor.group]))


def _checked_shapes(params: dict[str, Any], config: ModelConfig, maps: list[TensorMap]) -> dict[str, tuple[int, ...]]:
    """Hugging Face shape of every tensor; raises HFFormatError where `params` does not match the model `config`."""
    abstract = abstract_params(config)
    shapes = {}
    for tensor in maps:
        expected = leaf(abstract, tensor.path).shape
        try:
            found = tuple(leaf(params, tensor.path).shape)
        except (KeyError, IndexError, TypeError):
            raise HFFormatError(f"params have no {'/'.join(map(str, tensor.path))} (for {tensor.hf_name})") from None
        if found != expected:
            raise HFFormatError(
                f"params {'/'.join(map(str, tensor.path))} (for {tensor.hf_name}) has shape {list(found)}, the model "
                f"config needs {list(expected)}"
            )
        shapes[tensor.hf_name] = hf_shape(tensor.layout, expected[1:] if tensor.group is not None else expected)
    return shapes


def _plan_shards(
    maps: list[TensorMap], shapes: dict[str, tuple[int, ...]], dtype: np.dtype, max_shard_bytes: int
) -> list[list[TensorMap]]:
    """Consecutive tensors grouped into shards of at most `max_shard_bytes` (a larger tensor gets a shard alone)."""
    shards: list[list[TensorMap]] = [[]]
    size = 0
    for tensor in maps:
        nbytes = tensor_bytes(shapes[tensor.hf_name], dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def _shard_name(index: int, count: int) -> str:
    return WEIGHTS_FILE if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _load_tokenizer(name: str, eos_token: str | None, vocab_size: int) -> Any:
    """The run's Hugging Face tokenizer as transformers has it: `name` is a directory (read with its
    tokenizer_config.json) or a tokenizer.json file (given the run's eos token). Raises HFFormatError if its ids
    exceed the vocab."""
    # Only runs that used a Hugging Face tokenizer need transformers here.
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if pathlib.Path(name).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(name)
    else:
        eos = load_tokenizer(name, eos_token).eos_token
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(name)), eos_token=eos)
    if len(tokenizer) > vocab_size:
        raise HFFormatError(
            f"config.data.tokenizer={name!r} has {len(tokenizer)} tokens but config.model.vocab_size={vocab_size}"
        )
    return tokenizer


def _write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
