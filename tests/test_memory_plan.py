"""The memory plan (hybridlm.memory_plan, `python -m experiments --show=NAME --plan`): state bytes per device from the
sharding rules against hand counts, the 7B's verdicts without compiling, and the compiled plan of a small model."""

import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import experiments
from hybridlm import memory_plan, skip_step
from hybridlm.memory_plan import GRADIENTS, OPTIMIZER, PARAMETERS
from hybridlm.model import ModelConfig, abstract_model, count_params
from hybridlm.trainer import TrainProgram
from conftest import small_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# bytes beside the parameters and moments: the step, the optimizer's and the skip rule's int32 counters (with room to
# spare) and the skip rule's window of losses and gradient norms (2 x float32 [WINDOW], hybridlm.skip_step)
COUNTERS = 64 + 2 * 4 * skip_step.WINDOW


def _fsdp(config, size):
    config.mesh.data, config.mesh.fsdp = 1, size
    return config


def _expected_param_bytes(config, fsdp: int) -> int:
    """float32 parameters per device, by hand: a leaf with a d_model ("embed") axis is split over fsdp, the rest is
    replicated."""
    model = abstract_model(ModelConfig.from_config(config.model))
    shapes = nnx.to_flat_state(nnx.state(model, nnx.Param))
    logical = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model, nnx.Param))))
    total = 0
    for path, value in shapes:
        size = math.prod(value.shape) * 4
        total += size // fsdp if "embed" in tuple(logical[path].get_value()) else size
    return total


def test_replicated_state_is_4_4_8_bytes_per_parameter():
    config = small_config()
    params = count_params(ModelConfig.from_config(config.model))
    state = memory_plan.state_bytes_per_device(config, 1)
    assert state[PARAMETERS] == 4 * params
    assert state[GRADIENTS] == 4 * params
    assert 8 * params <= state[OPTIMIZER] <= 8 * params + COUNTERS


@pytest.mark.parametrize("fsdp", [2, 4])
def test_fsdp_divides_the_split_leaves(fsdp):
    replicated = memory_plan.state_bytes_per_device(small_config(), 1)
    config = _fsdp(small_config(), fsdp)
    state = memory_plan.state_bytes_per_device(config, fsdp)
    expected = _expected_param_bytes(config, fsdp)
    assert expected <= replicated[PARAMETERS] / fsdp * 1.1  # all but the norms and per-head gates split
    assert state[PARAMETERS] == state[GRADIENTS] == expected
    assert 2 * expected <= state[OPTIMIZER] <= 2 * expected + COUNTERS


def test_the_plans_layout_is_the_trainers():
    """On the devices present, the abstract state the plan lays out by itself has the trainer's shapes and specs."""
    config = small_config()
    model_config = ModelConfig.from_config(config.model)
    ours = memory_plan.state_leaves(memory_plan.abstract_state(config, model_config, jax.device_count()))
    trainers = memory_plan.state_leaves(TrainProgram(config, model_config).abstract_state())
    assert ours == trainers


def test_7b_on_one_h200_does_not_fit_without_compiling(monkeypatch):
    if jax.devices()[0].device_kind == "NVIDIA H200":
        pytest.skip("on an H200 the plan compiles the step")
    for variable in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(memory_plan, "measure_step", lambda *_: pytest.fail("compiled the step"))
    plan = memory_plan.plan(experiments.get_config("olmo_hybrid_7b"), "NVIDIA H200", 1, name="olmo_hybrid_7b")
    params = count_params(ModelConfig.from_config(experiments.get_config("olmo_hybrid_7b").model))
    assert plan.step is None and plan.fits is False
    assert plan.state_bytes == pytest.approx(12 * params, abs=COUNTERS)  # 89.2 GB: parameters and AdamW moments
    assert plan.state_bytes == pytest.approx(89.2e9, rel=1e-3)
    text = memory_plan.format_plan(plan)
    assert "fits: NO: parameters, gradients and AdamW state alone take 118.9 GB" in text
    assert "activations not measured" in text and "on 1 x NVIDIA H200 to measure them" in text
    assert "more fsdp" in text and "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95" in text
    assert len(text.splitlines()) <= 24  # one screen


def test_7b_with_fsdp_over_8_h200_holds_an_eighth(monkeypatch):
    monkeypatch.setattr(memory_plan, "measure_step", lambda *_: pytest.fail("compiled the step"))
    replicated = memory_plan.state_bytes_per_device(experiments.get_config("olmo_hybrid_7b"), 1)
    config = _fsdp(experiments.get_config("olmo_hybrid_7b"), 8)
    plan = memory_plan.plan(config, "NVIDIA H200", 8)
    assert plan.mesh == {"slices": 1, "data": 1, "fsdp": 8, "tensor": 1} and plan.rows_per_device == 64
    assert plan.state[PARAMETERS] == plan.state[GRADIENTS] == _expected_param_bytes(config, 8)
    assert plan.kept_inputs == 8 * 64 * 8192 * 3840 * 2  # each of the 8 layer groups' bf16 input, 64 rows per device
    for part in (PARAMETERS, GRADIENTS, OPTIMIZER):  # norms, convolutions and gates stay whole: 5.7 MB of 29.7 GB
        assert replicated[part] / 8 <= plan.state[part] <= replicated[part] / 8 * 1.002


def test_compiled_plan_agrees_with_the_compiler():
    """On the CPU the step is compiled: its arguments are the state (as the rules count it) and the batch, and the
    donated outputs are the state."""
    config = small_config()
    plan = memory_plan.plan(config, jax.devices()[0].device_kind, jax.device_count())
    state = plan.state_bytes
    batch = 3 * config.data.batch_size * config.data.seq_len * jnp.dtype(jnp.int32).itemsize
    assert plan.step.arguments == state + batch
    assert plan.step.aliased == state
    assert plan.step.temporaries > plan.state[GRADIENTS]
    assert plan.fits is True and plan.advice == ()
    assert "XLA's compile for this CPU" in memory_plan.format_plan(plan)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_plans_tiny_hybrid_on_the_cpu():
    small = ("--config.data.batch_size=2", "--config.data.seq_len=32", "--config.model.d_model=64")
    result = _cli("--show=tiny_hybrid", *small, "--plan")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("memory plan: tiny_hybrid on 1 x cpu"), result.stdout
    for line in ("batch 2: 2 rows x 32 tokens per device", "temporaries", "measured on the CPU", "fits: yes"):
        assert line in result.stdout, result.stdout


def test_cli_plans_8_h200_and_shows_overrides():
    result = _cli(
        "--show=olmo_hybrid_7b", "--config.mesh.data=1", "--config.mesh.fsdp=8", "--plan", "--devices=8",
        "--device_kind=NVIDIA H200",
    )
    assert result.returncode == 0, result.stderr
    assert "on 8 x NVIDIA H200 (mesh slices=1 data=1 fsdp=8 tensor=1)" in result.stdout, result.stdout
    assert "state               11.2 GB" in result.stdout, result.stdout
    shown = _cli("--show=tiny_hybrid", "--config.model.d_model=64")
    assert shown.returncode == 0 and "d_model: 64" in shown.stdout, shown.stderr
