"""The command line: experiment listing, and one-line errors for bad input before anything is built."""

import pathlib
import subprocess
import sys

import pytest

import experiments
from hybridlm import run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_validates(name):
    run_config.validate(experiments.get_config(name))


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
