"""The optimizer's wiring: config.optim's clipping, betas, eps, weight decay (and its mask), schedule and z-loss reach
the update the train step applies, checked against hand-written AdamW and loss."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import config_dict

from conftest import small_config
from hybridlm import config_checks
from hybridlm.model import ModelConfig, abstract_params
from hybridlm.optim import make_optimizer, weight_decay_mask
from hybridlm.trainer import TrainProgram

NUM_STEPS = 4
# Every number differs from default_run_config's defaults; b1 and b2 lie far apart and eps is near the clipped gradients'
# size, so swapping the betas or dropping eps or the clipping changes the update.
OPTIM = dict(
    lr=0.1,
    b1=0.5,
    b2=0.9,
    eps=0.05,
    weight_decay=0.3,
    grad_clip=1.0,
    z_loss=0.1,
    schedule="linear",
    warmup_steps=0,
    final_lr_ratio=0.5,
    decay_fraction=0.2,
)
LRS = [0.1, 0.0875, 0.075]  # the linear decay from lr to lr * final_lr_ratio over NUM_STEPS steps, at steps 0, 1, 2
DECAYED = {"embed": {"embedding": 0.0}, "lm_head": {"kernel": 1.0}, "final_norm": {"weight": 1.0}}


def _optim() -> config_dict.ConfigDict:
    return config_dict.ConfigDict(OPTIM)


def _tree(rng: np.random.Generator, norm: float) -> dict:
    """Random float32 arrays shaped like DECAYED's parameters, scaled to global norm `norm`."""
    tree = {
        "embed": {"embedding": rng.normal(size=(5, 3))},
        "lm_head": {"kernel": rng.normal(size=(3, 5))},
        "final_norm": {"weight": rng.normal(size=(3,))},
    }
    scale = norm / np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tree)))
    return jax.tree.map(lambda x: (x * scale).astype(np.float32), tree)


def _reference_adamw(params: dict, grads: list[dict]) -> dict:
    """OPTIM's AdamW written out in float64: per step, clip the gradients to global norm grad_clip, update the moments
    with b1 and b2, bias-correct them, add weight_decay * parameter (not on the embedding table, DECAYED) and step by
    that step's learning rate (LRS)."""
    b1, b2, eps = OPTIM["b1"], OPTIM["b2"], OPTIM["eps"]
    p = jax.tree.map(lambda x: x.astype(np.float64), params)
    m = v = jax.tree.map(np.zeros_like, p)
    for t, (g, lr) in enumerate(zip(grads, LRS), start=1):
        norm = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x: x * min(1.0, OPTIM["grad_clip"] / norm), g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_**2, v, g)

        def step(p_, m_, v_, decayed):
            adam = (m_ / (1 - b1**t)) / (np.sqrt(v_ / (1 - b2**t)) + eps)
            return p_ - lr * (adam + OPTIM["weight_decay"] * decayed * p_)

        p = jax.tree.map(step, p, m, v, DECAYED)
    return p


def test_adamw_matches_a_hand_computed_reference():
    """Three steps whose gradients have global norms 0.5 (kept), 40 and 3 (clipped to 1) give the parameters of
    AdamW written out by hand: clipping, betas, eps, weight decay off the embeddings and the schedule all apply."""
    rng = np.random.default_rng(0)
    params = _tree(rng, 2.0)
    grads = [_tree(rng, norm) for norm in (0.5, 40.0, 3.0)]
    optimizer = make_optimizer(_optim(), NUM_STEPS)
    state, ours = optimizer.init(params), params
    for g in grads:
        updates, state = optimizer.update(g, state, ours)
        ours = optax.apply_updates(ours, updates)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ours, _reference_adamw(params, grads)
    )


def test_a_huge_gradient_updates_as_its_clipped_self():
    """A gradient of global norm 1e6 gives the update of the same gradient scaled down to norm grad_clip."""
    rng = np.random.default_rng(1)
    params, huge = _tree(rng, 2.0), _tree(rng, 1e6)
    clipped = jax.tree.map(lambda x: x * (OPTIM["grad_clip"] / 1e6), huge)
    optimizer = make_optimizer(_optim(), NUM_STEPS)
    state = optimizer.init(params)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5),
        optimizer.update(huge, state, params)[0],
        optimizer.update(clipped, state, params)[0],
    )


def test_weight_decay_exempts_only_the_embedding_table():
    """On the model's whole parameter tree, the decay mask is False for the token embeddings alone: the LM head,
    norms and every layer's weights are decayed."""
    config = ModelConfig.from_config(small_config().model)
    mask = weight_decay_mask(abstract_params(config))
    exempt = [jax.tree_util.keystr(path) for path, decayed in jax.tree_util.tree_leaves_with_path(mask) if not decayed]
    assert exempt == ["['embed']['embedding']"]
    assert len(jax.tree.leaves(mask)) > 10  # the layers' parameters are in the tree, not only the top level's


def test_train_step_applies_the_configured_loss_and_optimizer():
    """One step of the trainer's jitted train step: its loss is cross-entropy + z_loss * mean(logsumexp^2), computed
    here from the model's logits, and its new parameters are OPTIM's AdamW step along that loss's gradient."""
    config = small_config(("attn",))
    config.optim.update(OPTIM)
    config.train.num_steps = NUM_STEPS
    program = TrainProgram(config, config_checks.validate(config))
    state = program.init_state()
    params = jax.device_get(state["params"])  # the step donates the state
    rng = np.random.default_rng(2)
    shape = (config.data.batch_size, config.data.seq_len)
    batch = {
        "inputs": rng.integers(0, 256, shape, dtype=np.int32),
        "targets": rng.integers(0, 256, shape, dtype=np.int32),
        "segment_ids": np.ones(shape, np.int32),
    }

    def reference_loss(p):
        logits = nnx.merge(program.graphdef, p)(batch["inputs"], batch["segment_ids"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return ce + OPTIM["z_loss"] * (jax.nn.logsumexp(logits, -1) ** 2).mean()

    loss, grads = jax.jit(jax.value_and_grad(reference_loss))(params)
    optimizer = make_optimizer(_optim(), NUM_STEPS)
    expected = optax.apply_updates(params, optimizer.update(grads, optimizer.init(params), params)[0])
    new_state, metrics = program.train_step(state, program.put_batch(batch))
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
        jax.device_get(new_state["params"]),
        expected,
    )
