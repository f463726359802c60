"""Loading trained models for scoring and tests: `load_model(path)` takes a training workdir or a Hugging Face
directory and returns a `Model` with `logits(tokens)` and `generate(prompts, max_new_tokens, ...)`."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import config_dict

from hybridlm import checkpoint, generate
from hybridlm.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from hybridlm.hf import load
from hybridlm.model import HybridLM, ModelConfig, abstract_model, abstract_params
from hybridlm.sampling import Sampling

_HF_COMPUTE_DTYPE = "float32"  # Hugging Face checkpoints load for scoring: full-precision compute unless asked


class Model:
    """A model and its weights. `params` is our nested dict of jax arrays; `run_config` the full run config."""

    def __init__(self, config: ModelConfig, params: dict[str, Any], run_config: config_dict.ConfigDict):
        self.config = config
        self.params = params
        self.run_config = run_config
        self._graphdef = nnx.graphdef(abstract_model(config))
        self._forward = jax.jit(lambda params, tokens: nnx.merge(self._graphdef, params)(tokens))

    def logits(self, tokens: Any) -> jax.Array:
        """tokens: int [B, T] (one document per row) -> float32 logits [B, T, vocab_size]. Raises ValueError for a
        token id outside [0, vocab_size) or a sequence longer than the model takes."""
        ids = np.asarray(tokens)
        self.config.check_seq_len(ids.shape[1])
        self._check_ids(ids)
        return self._forward(self.params, jnp.asarray(ids, jnp.int32))

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        seed: int = 0,
        stop_tokens: Sequence[int] = (),
    ) -> list[str] | list[list[int]]:
        """The continuation of each prompt (`hybridlm.generate.generate`): token lists give token lists; strings are
        encoded and decoded with the run's tokenizer (config.data.tokenizer). Raises ValueError naming the bad
        argument."""
        model = self.module()
        if not all(isinstance(p, str) for p in prompts):
            return generate.generate(model, prompts, max_new_tokens, sampling, seed, stop_tokens)
        tokenizer = self.tokenizer()
        ids = [ids.tolist() for ids in tokenizer.encode_batch(list(prompts))]
        outputs = generate.generate(model, ids, max_new_tokens, sampling, seed, stop_tokens)
        return [tokenizer.decode(out) for out in outputs]

    def module(self) -> HybridLM:
        """The model as a HybridLM holding these params (for `hybridlm.generate`)."""
        return nnx.merge(self._graphdef, self.params)

    def tokenizer(self) -> ByteTokenizer | HFTokenizer:
        """The run's tokenizer, config.data.tokenizer; raises ValueError when the run names none."""
        name = self.run_config.get("data", {}).get("tokenizer")
        if not name:
            raise ValueError(
                "this checkpoint names no tokenizer (config.data.tokenizer is unset), so string prompts cannot be "
                "encoded; pass token ids, or set data.tokenizer in the run's config.json"
            )
        return load_tokenizer(name, self.run_config.data.get("eos_token"))

    def _check_ids(self, tokens: np.ndarray) -> None:
        """Raises ValueError naming the first token id outside [0, vocab_size), which the model would turn into NaN."""
        outside = np.argwhere((tokens < 0) | (tokens >= self.config.vocab_size))
        if outside.size:
            at = tuple(int(i) for i in outside[0])
            raise ValueError(
                f"token id {int(tokens[at])} at {list(at)} is outside the model's vocab: ids go from 0 to "
                f"{self.config.vocab_size - 1} (config.model.vocab_size={self.config.vocab_size})"
            )


@dataclasses.dataclass(frozen=True)
class WorkdirCheckpoint:
    """One saved step of a training run: its run config, model config and params (numpy arrays on the host)."""

    run_config: config_dict.ConfigDict
    model_config: ModelConfig
    params: dict[str, Any]
    step: int


def load_model(path: str | pathlib.Path, *, step: int | None = None, dtype: str | None = None) -> Model:
    """The model in `path`: a training workdir (config.json and orbax checkpoints; `step` defaults to the latest) or
    a Hugging Face olmo_hybrid / olmo3 directory. `dtype` sets the compute dtype (default: the run's own for workdirs,
    float32 for Hugging Face directories). Raises ValueError naming the file or field that cannot be loaded."""
    path = pathlib.Path(path)
    if checkpoint.is_workdir(path):
        saved = load_workdir(path, step)
        run_config, params = saved.run_config, saved.params
    else:
        if step is not None:
            raise ValueError(f"{path} is a Hugging Face directory, which holds one set of weights; drop step={step}")
        run_config = load.run_config_from_hf(path)
        run_config.model.dtype = _HF_COMPUTE_DTYPE
        params = load.load_hf_params(path, ModelConfig.from_config(run_config.model))
    if dtype is not None:
        run_config.model.dtype = dtype
    config = ModelConfig.from_config(run_config.model)
    return Model(config, jax.device_put(params), run_config)


def load_workdir(workdir: str | pathlib.Path, step: int | None = None) -> WorkdirCheckpoint:
    """The run config and params saved at `step` (default: the latest) in a training workdir.

    Restores only the params subtree of the orbax train state (no optimizer state), as numpy arrays.
    """
    workdir = pathlib.Path(workdir)
    run_config = checkpoint.read_run_config(workdir)
    model_config = ModelConfig.from_config(run_config.model)
    params, step = checkpoint.restore_params(workdir, abstract_params(model_config), step)
    return WorkdirCheckpoint(run_config, model_config, params, step)
