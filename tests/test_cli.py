"""The command line: experiment listing and --show, one-line errors for bad input before anything is built, and
what a training run prints."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

import experiments
from hybridlm import config_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_validates(name):
    config = experiments.get_config(name)
    if name == "ladder":  # its corpus exists once prepared (tools/prepare_data.py --corpus=python_code)
        config.data.update(source="builtin", paths=())
    config_checks.validate(config)


def test_listing_names_every_experiment():
    result = _run("experiments")
    assert result.returncode == 0, result.stderr
    for name in ("olmo_hybrid_7b", "olmo3_7b", "tiny_hybrid", "tiny_transformer"):
        assert name in result.stdout
    assert "7.43B" in result.stdout and "7.30B" in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config=no_such_run"], "unknown experiment 'no_such_run'"),
        (["--config=tiny_hybrid", "--config.model.no_such_key=1"], "the config has no key 'no_such_key'"),
        (
            ["--config=tiny_hybrid", "--config.model.num_layers=6"],
            "config.model.num_layers=6 is not a positive multiple",
        ),
        (["--config=tiny_hybrid", "--config.model.layer_pattern=('gdn','mamba')"], "unknown layer types ['mamba']"),
        (["--config=tiny_hybrid", "--config.model.num_heads=5"], "config.model.d_model=128 is not divisible by"),
        (["--config=tiny_hybrid", "--config.data.seq_len=4096"], "sequence length 4096 is outside"),
        (
            ["--config=tiny_hybrid", "--config.data.source=token_files", "--config.data.paths=/nonexistent/t.npy"],
            "config.data.paths[0]: no such file '/nonexistent/t.npy'",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, expected):
    workdir = tmp_path / "run"
    result = _run("hybridlm.train", *args, f"--workdir={workdir}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not workdir.exists()  # nothing was built


def test_out_of_memory_names_the_memory_plan_command():
    from hybridlm.train import out_of_memory_message

    error = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 59.50GiB.\n  context: ..."
    argv = ["--config=olmo_hybrid_7b", "--workdir=/tmp/w", "--config.data.batch_size=2", "--config.mesh.fsdp=-1"]
    message = out_of_memory_message(error, argv)
    assert "\n" not in message and "allocate 59.50GiB" in message
    assert message.endswith(
        "with: python -m experiments --show=olmo_hybrid_7b --plan --config.data.batch_size=2 --config.mesh.fsdp=-1"
    )


def test_show_ends_with_the_sizes_of_the_overridden_config():
    """`--show` with an override prints the parameters (with and without the embedding table) and the FLOPs per
    token of the config as overridden, not as registered."""
    from hybridlm import flops
    from hybridlm.model import ModelConfig, count_params

    result = _run("experiments", "--show=tiny_hybrid", "--config.model.num_layers=8")
    assert result.returncode == 0, result.stderr
    config = experiments.get_config("tiny_hybrid")
    config.model.num_layers = 8
    model = ModelConfig.from_config(config.model)
    params, embedding = count_params(model), model.vocab_size * model.d_model
    assert result.stdout.strip().splitlines()[-2:] == [
        f"# parameters: {params:,} ({params - embedding:,} without the embedding table)",
        f"# training FLOPs per token at seq_len 128: {flops.flops_per_token(model, 128):,.0f}",
    ]


def test_show_prints_the_derived_fields_of_the_overridden_config():
    """`--show=olmo_hybrid_7b --config.model.num_heads=16`: the KV heads, head dim and GDN shape follow the new head
    count (hybridlm.config_defaults.model_config)."""
    result = _run("experiments", "--show=olmo_hybrid_7b", "--config.model.num_heads=16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line in ("  num_heads: 16", "  num_kv_heads: 16", "  head_dim: 240"):
        assert line in lines
    gdn = ("    num_key_heads: 16", "    num_value_heads: 16", "    key_head_dim: 180", "    value_head_dim: 360")
    for line in gdn:
        assert line in lines  # model.gdn: 3/4 x 3840 / 16 wide keys, values twice that


def test_show_of_a_model_that_cannot_be_built_is_one_clear_line():
    result = _run("experiments", "--show=tiny_hybrid", "--config.model.num_heads=5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config.model.d_model=128 is not divisible by config.model.num_heads=5; change one of them or set "
        "config.model.head_dim"
    ]
    assert not result.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Three steps of tiny_hybrid from the command line, each logged: (its output, its metrics records)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = _run(
        "hybridlm.train",
        "--config=tiny_hybrid",
        f"--workdir={workdir}",
        *("--config.data.batch_size=2", "--config.data.seq_len=64", "--config.data.max_bytes=400000"),
        *("--config.data.heldout_fraction=0.2", "--config.optim.warmup_steps=1", "--config.train.num_steps=3"),
        *("--config.train.log_every=1", "--config.train.eval_every=3", "--config.train.eval_batches=1"),
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return result, [record for record in records if "loss" in record]


def test_training_starts_with_a_summary_of_the_run(tiny_run):
    """Once, before the first step: the experiment, its size and cost, devices and mesh, the kernels "auto" picks on
    this CPU, and the tokens."""
    import jax

    from hybridlm import flops
    from hybridlm.model import ModelConfig, count_params

    result, _ = tiny_run
    config = experiments.get_config("tiny_hybrid")
    model = ModelConfig.from_config(config.model)
    params, embedding, devices = count_params(model), model.vocab_size * model.d_model, jax.device_count()
    assert result.stdout.splitlines()[:6] == [
        f"experiment: tiny_hybrid: {config.description}",
        f"parameters: {params:,} ({params - embedding:,} without the embedding table)",
        f"training FLOPs per token at seq_len 64: {flops.flops_per_token(model, 64):,.0f}",
        f"devices: {devices} x cpu in 1 process, backend cpu; mesh slices=1 x data={devices} x fsdp=1 x tensor=1",
        "kernels: attention xla, GDN chunked, short conv xla, output norm xla",
        "tokens: 128 per step (2 x 64), 384 over 3 steps",
    ]
    assert result.stdout.count("experiment: ") == 1


def test_the_summary_names_a_config_with_its_argument():
    from hybridlm.named_configs import experiment_name

    assert experiment_name("/src/experiments/ladder.py:hybrid-0.74M/decay1x") == "ladder:hybrid-0.74M/decay1x"
    assert experiment_name("experiments/tiny_hybrid.py") == "tiny_hybrid"


def test_progress_bar_shows_the_smoothed_loss(tiny_run):
    """The bar's loss_ema after the last step is the bias-corrected moving average (decay 0.98 a step) of the
    per-step losses that metrics.jsonl keeps; the z-loss is logged as the term added to the loss."""
    result, records = tiny_run
    losses = [record["loss"] for record in records]
    weights = [0.98 ** (len(losses) - 1 - i) for i in range(len(losses))]
    smoothed = sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)
    shown = re.findall(r"loss_ema=([\d.]+)", result.stderr)
    assert shown and float(shown[-1]) == pytest.approx(smoothed, abs=1e-4)
    assert float(shown[-1]) != pytest.approx(losses[-1], abs=1e-4)
    for record in records:
        assert record["z_loss"] == pytest.approx(1e-5 * record["log_z_squared"], rel=1e-5)
        assert record["loss"] == pytest.approx(record["ce"] + record["z_loss"], rel=1e-6)
