"""The training loop: build the model and data from a run config, train, evaluate, checkpoint and resume."""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from ml_collections import config_dict

from hybridlm import checkpoint, flops, run_config, sharding
from hybridlm.data.pipeline import first_difference, load_data
from hybridlm.hf import load as hf_load
from hybridlm.loss import lm_loss
from hybridlm.metrics import MetricsWriter
from hybridlm.model import HybridLM, ModelConfig
from hybridlm.model.config import ConfigError
from hybridlm.optim import learning_rate_schedule, make_optimizer

TrainState = dict[str, Any]  # {"step": int32 [], "params": nested dict of arrays, "opt_state": optax state}
IteratorState = dict[str, Any]  # grain's iterator state: {"next_index": the next step's batch}

# Batches are read by a grain iterator that prefetches a couple of steps ahead on background threads.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def _forward_loss(
    graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], z_loss_weight: float, document_mask: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    model = nnx.merge(graphdef, params)
    hidden = model.hidden(batch["inputs"], segment_ids=batch["segment_ids"] if document_mask else None)
    kernel = model.lm_head.kernel[...]
    return lm_loss(hidden, kernel, batch["targets"], z_loss_weight, model.config.loss_chunk_tokens)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    z_loss_weight: float,
    document_mask: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on a batch (int32 [B, T] inputs, targets, segment_ids); returns the new state and metrics."""
    grad_fn = jax.value_and_grad(functools.partial(_forward_loss, graphdef), has_aux=True)
    (loss, parts), grads = grad_fn(state["params"], batch, z_loss_weight, document_mask)
    with jax.named_scope("optimizer"):
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
        }
        grad_norm = optax.tree.norm(grads)
    metrics = {"loss": loss, **parts, "grad_norm": grad_norm, "lr": schedule(state["step"])}
    return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef, document_mask: bool) -> jax.Array:
    """Mean next-token cross-entropy (nats) of the batch."""
    return _forward_loss(graphdef, params, batch, 0.0, document_mask)[1]["ce"]


class TrainProgram:
    """What a run computes, apart from its data: the model's graph, the optimizer and schedule, and the jitted
    init, train and eval steps on a data-parallel mesh over every device."""

    def __init__(self, config: config_dict.ConfigDict, model_config: ModelConfig):
        self.config = config
        self.model_config = model_config
        self.mesh = sharding.data_parallel_mesh()
        num_steps = config.train.num_steps
        self.schedule = learning_rate_schedule(config.optim, num_steps)
        self.optimizer = make_optimizer(config.optim, num_steps)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: HybridLM(model_config, nnx.Rngs(0))))
        document_mask = bool(config.data.document_mask)
        self.train_step = jax.jit(
            functools.partial(
                train_step,
                graphdef=self.graphdef,
                optimizer=self.optimizer,
                schedule=self.schedule,
                z_loss_weight=config.optim.z_loss,
                document_mask=document_mask,
            ),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(functools.partial(eval_step, graphdef=self.graphdef, document_mask=document_mask))
        self.tokens_per_step = config.data.batch_size * config.data.seq_len
        self.flops_per_step = flops.flops_per_token(model_config, config.data.seq_len) * self.tokens_per_step
        peaks = [flops.peak_flops(device) for device in self.mesh.devices.flat]
        self.peak_flops = None if None in peaks else sum(peaks)  # of the whole mesh; None where a device is unknown

    def init_state(self, params: Any = None) -> TrainState:
        """Step 0 with `params` (our nested dict), or with freshly initialised parameters when None."""

        def init(params: Any) -> TrainState:
            if params is None:
                model = HybridLM(self.model_config, nnx.Rngs(self.config.seed))
                params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.optimizer.init(params)}

        return jax.jit(init, out_shardings=sharding.replicated(self.mesh))(params)

    def abstract_state(self) -> TrainState:
        """The train state's shapes, dtypes and shardings, for restoring checkpoints."""
        replicated = sharding.replicated(self.mesh)
        abstract = jax.eval_shape(self.init_state)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)

    def mfu(self, seconds_per_step: float) -> float | None:
        """Model FLOPs utilisation of a step that took `seconds_per_step` (hybridlm.flops), or None off the known
        accelerators."""
        return None if self.peak_flops is None else self.flops_per_step / seconds_per_step / self.peak_flops


class Trainer:
    """Owns one run: its model, optimizer, data, checkpoints and metrics in `workdir`."""

    def __init__(self, config: config_dict.ConfigDict, workdir: str | pathlib.Path):
        if config.get("init_from_hf"):
            config = hf_load.with_hf_architecture(config, config.init_from_hf)
        self.config = config
        self.model_config: ModelConfig = run_config.validate(config)
        self.workdir = pathlib.Path(workdir)
        self.data = load_data(config)
        self.workdir.mkdir(parents=True, exist_ok=True)
        checkpoint.record_config(self.workdir, config)
        self.program = TrainProgram(config, self.model_config)
        self.checkpointer = checkpoint.Checkpointer(self.workdir, config.train.keep_checkpoints)

    def initial_state(self) -> TrainState:
        """The latest checkpoint in the workdir if there is one, else the Hugging Face weights named by
        `config.init_from_hf`, else freshly initialised parameters."""
        return self._start()[0]

    def _start(self) -> tuple[TrainState, IteratorState]:
        """The initial train state and the data iterator's state (restored with the checkpoint, after checking that
        the data still yields the same batches)."""
        step = self.checkpointer.latest_step()
        if step is None and self.config.get("init_from_hf"):
            tqdm.tqdm.write(f"starting from the Hugging Face checkpoint {self.config.init_from_hf}")
            params = hf_load.load_hf_params(self.config.init_from_hf, self.model_config)
            return self.program.init_state(params), {}
        if step is None:
            return self.program.init_state(), {}
        state, data_state = self.checkpointer.restore(step, self.program.abstract_state())
        changed = first_difference(data_state["fingerprint"], self.data.fingerprint)
        if changed:
            raise ConfigError(
                f"the checkpoint at step {step} in {self.workdir / 'checkpoints'} was trained on data that gives "
                f"different batches ({changed}); use a new --workdir or the data config it was trained with"
            )
        tqdm.tqdm.write(f"resumed from the checkpoint at step {step} in {self.workdir / 'checkpoints'}")
        return state, data_state["iterator"]

    def _data_state(self, iterator: grain.DatasetIterator) -> dict[str, Any]:
        """What a checkpoint records of the data: the iterator's position and the fingerprint of the batches."""
        return {"iterator": iterator.get_state(), "fingerprint": self.data.fingerprint}

    def evaluate(self, params: Any) -> float:
        """Mean held-out cross-entropy in nats over `config.train.eval_batches` batches of windows drawn (with a fixed
        seed) from across the whole held-out split, the same ones at every evaluation."""
        batches = (self.data.heldout[i] for i in range(self.config.train.eval_batches))
        mesh = self.program.mesh
        losses = [self.program.eval_step(params, sharding.put_batch(batch, mesh)) for batch in batches]
        return float(np.mean(jax.device_get(losses)))

    def train(self) -> dict[str, float]:
        """Trains to `config.train.num_steps` from wherever the workdir left off; returns the last logged metrics."""
        train = self.config.train
        state, iterator_state = self._start()
        start = int(state["step"])
        iterator = iter(self.data.train.to_iter_dataset(READ_OPTIONS))
        iterator.set_state(iterator_state or {"next_index": start})
        writer = MetricsWriter(self.workdir)
        last: dict[str, float] = {}
        tqdm.tqdm.write(f"unigram entropy of the training data: {self.data.unigram_entropy:.4f} nats/token")
        progress = tqdm.tqdm(total=train.num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        window_start, window_steps = time.perf_counter(), 0
        try:
            for step in range(start, train.num_steps):
                state, metrics = self.program.train_step(state, sharding.put_batch(next(iterator), self.program.mesh))
                done = step + 1
                window_steps += 1
                progress.update(1)
                if done % train.log_every == 0 or done == train.num_steps:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    elapsed = time.perf_counter() - window_start
                    last["tokens_per_sec"] = window_steps * self.program.tokens_per_step / elapsed
                    mfu = self.program.mfu(elapsed / window_steps)
                    if mfu is not None:
                        last["mfu"] = mfu
                    writer.write(done, last)
                    progress.set_postfix(
                        loss=f"{last['loss']:.4f}",
                        lr=f"{last['lr']:.2e}",
                        grad_norm=f"{last['grad_norm']:.3f}",
                        tok_s=f"{last['tokens_per_sec']:.0f}",
                        **({"mfu": f"{last['mfu']:.1%}"} if "mfu" in last else {}),
                    )
                if done % train.eval_every == 0 or done == train.num_steps:
                    last["eval_loss"] = self.evaluate(state["params"])
                    writer.write(done, {"eval_loss": last["eval_loss"]})
                    tqdm.tqdm.write(
                        f"step {done}: held-out loss {last['eval_loss']:.4f} nats "
                        f"(unigram entropy {self.data.unigram_entropy:.4f}), train loss {last.get('loss', 0):.4f}"
                    )
                if done % train.checkpoint_every == 0 or done == train.num_steps:
                    self.checkpointer.save(done, state, self._data_state(iterator))
                if done % train.log_every == 0:
                    window_start, window_steps = time.perf_counter(), 0  # eval and checkpoint time stay out of tokens/s
        finally:
            iterator.close()
            progress.close()
            writer.close()
            self.checkpointer.close()
        return last
