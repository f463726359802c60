"""The training loop: build the model and data from a run config, train, evaluate, checkpoint and resume."""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import grain
import jax
import numpy as np
import optax
import tqdm
from flax import nnx
from ml_collections import config_dict

from hybridlm import checkpoint, flops, partitioning, preemption, config_checks, skip_step, summary, train_state
from hybridlm.data.pipeline import first_difference, load_data
from hybridlm.hf import load as hf_load
from hybridlm.loss import lm_loss
from hybridlm.metrics import LossEMA, MetricsWriter, peak_device_bytes
from hybridlm.model import ModelConfig, abstract_model
from hybridlm.train_state import TrainState
from hybridlm.model.config import ConfigError
from hybridlm.optim import learning_rate_schedule, make_optimizer
from hybridlm.workdir_lock import WorkdirLock

IteratorState = dict[str, Any]  # grain's iterator state: {"next_index": the next step's batch}

# Batches are read by a grain iterator that prefetches a couple of steps ahead on background threads.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def _forward_loss(
    graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array], z_loss_weight: float, document_mask: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    model = nnx.merge(graphdef, params)
    hidden = model.hidden(batch["inputs"], segment_ids=batch["segment_ids"] if document_mask else None)
    kernel = model.lm_head.kernel[...]
    chunk_tokens = model.config.loss_chunk_tokens
    return lm_loss(hidden, kernel, batch["targets"], z_loss_weight, chunk_tokens, batch.get("loss_mask"))


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
    """One AdamW step on a batch (int32 [B, T] inputs, targets, segment_ids, and optionally float32 [B, T]
    loss_mask: per-token loss weights, hybridlm.loss.lm_loss), or a skipped one (hybridlm.skip_step:
    a non-finite or outlying loss or gradient norm leaves the parameters and moments as they were, and the step
    counter advances); returns the new state and the metrics (float32 [] each, the skip counters int32 [])."""
    grad_fn = jax.value_and_grad(functools.partial(_forward_loss, graphdef), has_aux=True)
    (loss, parts), grads = grad_fn(state["params"], batch, z_loss_weight, document_mask)
    with jax.named_scope("optimizer"):
        grad_norm = optax.tree.norm(grads)
        skipped = skip_step.should_skip(state["skip"], loss, grad_norm)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"], skipped=skipped)
        params = optax.apply_updates(state["params"], updates)
        new_state = {
            "step": state["step"] + 1,
            "params": skip_step.unless_skipped(skipped, params, state["params"]),
            "opt_state": opt_state,
            "skip": skip_step.record(state["skip"], loss, grad_norm, skipped),
        }
    metrics = {
        "loss": loss,
        **parts,
        "grad_norm": grad_norm,
        "lr": schedule(state["step"]),
        **skip_step.step_metrics(new_state["skip"], skipped),
    }
    return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef, document_mask: bool) -> jax.Array:
    """Mean next-token cross-entropy (nats) of the batch, weighted by its loss_mask if it has one."""
    return _forward_loss(graphdef, params, batch, 0.0, document_mask)[1]["ce"]


class TrainProgram:
    """What a run computes, apart from its data: the model's graph, the optimizer and schedule, the mesh and the
    layout of the train state on it, and the jitted init, train and eval steps.

    Parameters and optimizer state are split over the mesh by hybridlm.partitioning's rules and created in place
    (initialised inside `jit` with sharded outputs): no device holds the whole state unless the mesh replicates it.
    """

    def __init__(self, config: config_dict.ConfigDict, model_config: ModelConfig):
        self.config = config
        self.model_config = model_config
        self.layout = partitioning.layout(config.mesh)
        self.mesh = self.layout.mesh
        num_steps = config.train.num_steps
        self.schedule = learning_rate_schedule(config.optim, num_steps)
        self.optimizer = make_optimizer(config.optim, num_steps)
        self.graphdef = nnx.graphdef(abstract_model(model_config))
        self.state_shardings = train_state.state_shardings(model_config, self.optimizer, self.layout)
        self.param_shardings = self.state_shardings["params"]
        self.batch_sharding = self.layout.sharding(("batch", None))
        document_mask = bool(config.data.document_mask)
        self.train_step = jax.jit(
            partitioning.traced_on(
                self.layout,
                functools.partial(
                    train_step,
                    graphdef=self.graphdef,
                    optimizer=self.optimizer,
                    schedule=self.schedule,
                    z_loss_weight=config.optim.z_loss,
                    document_mask=document_mask,
                ),
            ),
            in_shardings=(self.state_shardings, self.batch_sharding),  # every [B, T] array of the batch
            out_shardings=(self.state_shardings, self.layout.replicated),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            partitioning.traced_on(
                self.layout, functools.partial(eval_step, graphdef=self.graphdef, document_mask=document_mask)
            ),
            in_shardings=(self.state_shardings["params"], self.batch_sharding),
            out_shardings=self.layout.replicated,
        )
        self.all_finite = jax.jit(
            skip_step.all_finite, in_shardings=(self.state_shardings,), out_shardings=self.layout.replicated
        )
        self.tokens_per_step = config.data.batch_size * config.data.seq_len
        self.flops_per_step = flops.flops_per_token(model_config, config.data.seq_len) * self.tokens_per_step
        peak = config.train.get("peak_flops_per_device")
        peaks = [peak or flops.peak_flops(device) for device in self.mesh.devices.flat]
        self.peak_flops = None if None in peaks else sum(peaks)  # of the whole mesh; None where a device is unknown

    def init_state(self, params: Any = None) -> TrainState:
        """Step 0 with `params` (our nested dict, e.g. of numpy arrays: each device receives only its shards), or
        with freshly initialised parameters when None, laid out by `state_shardings`."""
        if params is not None:
            params = jax.device_put(params, self.param_shardings)
        init = functools.partial(train_state.initial_state, self.model_config, self.optimizer, self.config.seed)
        return jax.jit(init, out_shardings=self.state_shardings)(params)

    def abstract_state(self) -> TrainState:
        """The train state's shapes, dtypes and shardings on this program's mesh, for restoring checkpoints (saved
        on any mesh) straight into place."""
        return train_state.abstract_state(self.model_config, self.optimizer, self.layout)

    def check_savable(self, step: int, state: TrainState) -> None:
        """Raises skip_step.DivergenceError when the state after `step` holds a non-finite value: no checkpoint is
        written from one, so rotation never deletes the newest finite checkpoint to make room for it. Skipping keeps
        the state finite (hybridlm.skip_step), so this only guards against a finite update that overflows."""
        if not bool(self.all_finite(state)):
            raise skip_step.non_finite_state_error(step, self.config.optim)

    def put_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """The global batch from every process's rows (numpy arrays [batch_size // process_count, ...]), split by
        rows over the mesh's batch axes."""
        return partitioning.put_batch(batch, self.batch_sharding)

    def mfu(self, seconds_per_step: float) -> float | None:
        """Model FLOPs utilisation of a step that took `seconds_per_step` (hybridlm.flops), or None off the known
        accelerators."""
        return None if self.peak_flops is None else self.flops_per_step / seconds_per_step / self.peak_flops


class Trainer:
    """Owns one run: its model, optimizer, data, checkpoints and metrics in `workdir`.

    In a run of several processes every process builds a Trainer and trains in step; all of them save and restore
    checkpoints together, and process 0 alone locks the workdir, writes config.json and the metrics and shows progress.
    `name`: the experiment's, for the summary printed when training starts.
    """

    def __init__(self, config: config_dict.ConfigDict, workdir: str | pathlib.Path, name: str | None = None):
        if config.get("init_from_hf"):
            config = hf_load.with_hf_architecture(config, config.init_from_hf)
        self.config = config
        self.name = name
        self.model_config: ModelConfig = config_checks.validate(config)
        self.workdir = pathlib.Path(workdir)
        self._is_lead = jax.process_index() == 0  # process 0: the one that reports
        self.data = load_data(config)
        self.keep_steps = tuple(config.train.get("keep_steps", ()))  # saved and kept, e.g. a ladder's branch points
        self.checkpointer = checkpoint.Checkpointer(
            self.workdir, config.train.keep_checkpoints, self._lock_workdir(), keep_steps=self.keep_steps
        )
        self._refuse_steps_below_checkpoint()
        self._record_config()
        self.program = TrainProgram(config, self.model_config)

    def _lock_workdir(self) -> WorkdirLock | None:
        """Process 0 locks the workdir (creating it) for this run, refusing one that another run holds or that cannot
        be written (hybridlm.workdir_lock); the other processes only make sure it exists."""
        if not self._is_lead:
            self.workdir.mkdir(parents=True, exist_ok=True)
            return None
        return WorkdirLock.acquire(self.workdir, self._say)

    def _record_config(self) -> None:
        """Records the config in the workdir (refusing a different model, or optimizer or schedule changes that
        config.train.allow_resume_changes does not allow) and reports the changes allowed."""
        try:
            changes = checkpoint.record_config(self.workdir, self.config)
        except ConfigError:
            self.checkpointer.close()
            raise
        if changes:
            self._say(f"resuming with changes allowed by config.train.allow_resume_changes: {', '.join(changes)}")

    def _refuse_steps_below_checkpoint(self) -> None:
        """Raises ConfigError, before config.json is rewritten, when the workdir's latest checkpoint is past
        `config.train.num_steps`: training would do nothing and exit as if it had finished."""
        step, num_steps = self.checkpointer.latest_step(), self.config.train.num_steps
        if step is not None and step > num_steps:
            self.checkpointer.close()
            raise ConfigError(
                f"config.train.num_steps={num_steps} is below step {step}, the latest checkpoint in "
                f"{self.checkpointer.directory}; set config.train.num_steps to {step} or more, or use a new --workdir"
            )

    def initial_state(self) -> TrainState:
        """The newest intact checkpoint in the workdir if there is one, else the Hugging Face weights named by
        `config.init_from_hf`, else another run's checkpoint named by `config.init_from`, else freshly initialised
        parameters."""
        return self._start()[0]

    def _say(self, message: str) -> None:
        """Prints `message` above the progress bar, on process 0 only."""
        if self._is_lead:
            tqdm.tqdm.write(message)

    def _start(self) -> tuple[TrainState, IteratorState]:
        """The initial train state and the data iterator's state: restored from the newest intact checkpoint (newer
        ones that are corrupt, partial or empty are reported and moved aside; hybridlm.checkpoint), after checking
        that the data still yields the same batches."""
        step = self.checkpointer.newest_intact_step(self._say)
        if step is None and self.config.get("init_from_hf"):
            self._say(f"starting from the Hugging Face checkpoint {self.config.init_from_hf}")
            params = hf_load.load_hf_params(self.config.init_from_hf, self.model_config)
            return self.program.init_state(params), {}
        if step is None and self.config.get("init_from"):
            return self._start_from_other_run()
        if step is None:
            return self.program.init_state(), {}
        state, data_state = self.checkpointer.restore(step, self.program.abstract_state())
        self._check_same_batches(data_state, step, self.checkpointer.directory)
        self._say(f"resumed from the checkpoint at step {step} in {self.checkpointer.directory}")
        return state, data_state["iterator"]

    def _start_from_other_run(self) -> tuple[TrainState, IteratorState]:
        """The whole train state and data position that the run in the workdir `config.init_from` saved at step
        `config.init_from_step` (None: its newest intact checkpoint): this run continues from there as that run would
        have, under its own schedule (a ladder's decay branching from its stable run, experiments/ladder.py)."""
        other = pathlib.Path(self.config.init_from)
        try:
            state, data_state, step = checkpoint.restore_state(
                other, self.program.abstract_state(), self.config.get("init_from_step")
            )
        except ValueError as e:
            raise ConfigError(f"config.init_from={str(other)!r}: {e}") from None
        if step > self.config.train.num_steps:
            raise ConfigError(
                f"config.init_from_step={step} is past config.train.num_steps={self.config.train.num_steps}; "
                "branch from an earlier step or train longer"
            )
        self._check_same_batches(data_state, step, checkpoint.checkpoints_dir(other))
        self._say(f"starting from the checkpoint at step {step} of the run in {other}")
        return state, data_state["iterator"]

    def _check_same_batches(self, data_state: dict[str, Any], step: int, directory: pathlib.Path) -> None:
        """Raises ConfigError when the checkpoint at `step` in `directory` was trained on data that gives other
        batches than this run's."""
        changed = first_difference(data_state["fingerprint"], self.data.fingerprint)
        if changed:
            raise ConfigError(
                f"the checkpoint at step {step} in {directory} was trained on data that gives "
                f"different batches ({changed}); use a new --workdir or the data config it was trained with"
            )

    def _data_state(self, iterator: grain.DatasetIterator) -> dict[str, Any]:
        """What a checkpoint records of the data: the iterator's position and the fingerprint of the batches."""
        return {"iterator": iterator.get_state(), "fingerprint": self.data.fingerprint}

    def _stop_before_training(self) -> None:
        """Raises preemption.Stopped if a signal came while the run started up: before its first step, with nothing
        new to save. In a run of several processes this also reports the step the run resumes at to JAX's
        preemption sync point, which counts from there."""
        step = self.checkpointer.latest_step() or 0
        if preemption.requested(step):
            self.checkpointer.close()
            raise preemption.Stopped(step, self.checkpointer.directory, trained=False)

    def evaluate(self, params: Any) -> float:
        """Mean held-out cross-entropy in nats over `config.train.eval_batches` batches of windows drawn (with a fixed
        seed) from across the whole held-out split, the same ones at every evaluation."""
        batches = (self.data.heldout[i] for i in range(self.config.train.eval_batches))
        losses = [self.program.eval_step(params, self.program.put_batch(batch)) for batch in batches]
        return float(np.mean(jax.device_get(losses)))

    def train(self) -> dict[str, float]:
        """Trains to `config.train.num_steps` from wherever the workdir left off, after printing what the run is
        (hybridlm.summary); returns the last logged metrics."""
        train = self.config.train
        self._stop_before_training()
        if self._is_lead:
            self._say("\n".join(summary.startup_lines(self.config, self.model_config, self.program.mesh, self.name)))
        state, iterator_state = self._start()
        start = int(state["step"])
        iterator = iter(self.data.train.to_iter_dataset(READ_OPTIONS))
        iterator.set_state(iterator_state or {"next_index": start})
        writer = MetricsWriter(self.workdir, resumed_at=start)  # drops the records of steps to be replayed
        last: dict[str, float] = {}
        self._say(f"unigram entropy of the training data: {self.data.unigram_entropy:.4f} nats/token")
        loss_ema, losses = LossEMA(), []  # the losses of the steps since the last log step, read there
        progress = tqdm.tqdm(
            total=train.num_steps,
            initial=start,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not self._is_lead,
        )
        window_start, window_steps = time.perf_counter(), 0
        streak = skip_step.SkipStreak(train.max_consecutive_skips, self.config.optim)
        timer = preemption.CheckpointTimer(train.get("checkpoint_minutes"))
        try:
            for step in range(start, train.num_steps):
                self.checkpointer.raise_if_failed()  # a failed background save stops the run here, without waiting
                state, metrics = self.program.train_step(state, self.program.put_batch(next(iterator)))
                done = step + 1
                streak.push(done, metrics)  # raises DivergenceError after too many skipped steps in a row
                losses.append(metrics["loss"])
                window_steps += 1
                progress.update(1)
                if done % train.log_every == 0 or done == train.num_steps:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    elapsed = time.perf_counter() - window_start
                    last["tokens_per_sec"] = window_steps * self.program.tokens_per_step / elapsed
                    last["tokens_per_sec_per_device"] = last["tokens_per_sec"] / self.program.mesh.size
                    mfu = self.program.mfu(elapsed / window_steps)
                    if mfu is not None:
                        last["mfu"] = mfu
                    peak = peak_device_bytes()
                    if peak is not None:
                        last["peak_memory_gib"] = peak / 2**30
                    writer.write(done, last)
                    smoothed = loss_ema.update(float(loss) for loss in jax.device_get(losses))
                    losses.clear()
                    progress.set_postfix(
                        loss_ema=f"{smoothed:.4f}",
                        lr=f"{last['lr']:.2e}",
                        grad_norm=f"{last['grad_norm']:.3f}",
                        skipped=f"{last['skipped']:.0f}",
                        skipped_steps=f"{last['skipped_steps']:.0f}",
                        tok_s=f"{last['tokens_per_sec']:.0f}",
                        tok_s_dev=f"{last['tokens_per_sec_per_device']:.0f}",
                        **({"mfu": f"{last['mfu']:.1%}"} if "mfu" in last else {}),
                    )
                if done % train.eval_every == 0 or done == train.num_steps:
                    last["eval_loss"] = self.evaluate(state["params"])
                    writer.write(done, {"eval_loss": last["eval_loss"]})
                    self._say(
                        f"step {done}: held-out loss {last['eval_loss']:.4f} nats "
                        f"(unigram entropy {self.data.unigram_entropy:.4f}), train loss {last.get('loss', 0):.4f}"
                    )
                timed = done % train.log_every == 0 and timer.due()  # log steps: the host waits for the step there
                stopping = done < train.num_steps and preemption.requested(done)
                kept = done in self.keep_steps
                if done % train.checkpoint_every == 0 or done == train.num_steps or timed or stopping or kept:
                    streak.settle()
                    self.program.check_savable(done, state)  # never a non-finite checkpoint
                    self.checkpointer.save(done, state, self._data_state(iterator))
                    timer.restart()
                if stopping:
                    raise preemption.Stopped(done, self.checkpointer.directory, trained=True)  # `finally` waits for it
                if done % train.log_every == 0:
                    window_start, window_steps = time.perf_counter(), 0  # eval and checkpoint time stay out of tokens/s
        finally:
            iterator.close()
            progress.close()
            writer.close()
            self.checkpointer.close()
        return last
