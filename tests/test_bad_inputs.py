"""Bad input gets one line, `error: ...`, naming the key, file or value and the fix: no traceback, nothing accepted
silently (issue 16, item 6).

Flags, files and the command line's own checks run the real CLI in a subprocess; checks of config values, data
files, Hugging Face checkpoints and the Python API run in-process, raising the ValueError that the CLI prints as its
one line (`hybridlm.train.main` turns any ValueError from building the Trainer into `error: ...`).
"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import small_config
from hybridlm import api, checkpoint, run_config
from hybridlm.data.pipeline import load_data
from hybridlm.data.token_files import write_metadata
from hybridlm.hf import convert
from hybridlm.hf.export import export_params, export_workdir
from hybridlm.model import ModelConfig, abstract_params
from hybridlm.model.config import ConfigError
from hybridlm.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
EOS = 256


def _cli(*args: str) -> str:
    """Runs `python -m <args>` and returns its one error line, after checking that it exits with 2 and writes
    exactly one non-empty line to stderr, starting with "error: ", and no traceback."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Hugging Face exports of the small test model: whole, sharded, and damaged copies of each."""
    root = tmp_path_factory.mktemp("hf")
    config = ModelConfig.from_config(small_config().model)
    params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), abstract_params(config))
    tokens = convert.SpecialTokens(bos=None, eos=EOS, pad=EOS + 1)
    shard_bytes = {"whole": 10**9, "shard_missing": 20_000, "shard_truncated": 20_000, "no_weights": 10**9}
    for name, most in shard_bytes.items():
        export_params(params, config, root / name, dtype="float32", tokens=tokens, max_shard_bytes=most)
    shards = sorted((root / "shard_missing").glob("model-*.safetensors"))
    shards[1].unlink()
    first = sorted((root / "shard_truncated").glob("model-*.safetensors"))[0]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    (root / "no_weights" / "model.safetensors").unlink()
    return {p.name: p for p in root.iterdir()}


# The command line: flags and files, each in a subprocess (about a second each; the init_from_hf ones import jax).

CLI_CASES = [
    ("config file missing", ["hybridlm.train", "--config=/nope.py"], "config file /nope.py does not exist; give"),
    ("config file syntax", ["hybridlm.train", "--config={tmp}/syntax.py"], "syntax.py, line 1: invalid syntax; fix"),
    ("no get_config", ["hybridlm.train", "--config={tmp}/empty.py"], "empty.py defines no get_config(); add"),
    (
        "workdir is a file",
        ["hybridlm.train", "--config=tiny_hybrid", "--workdir={tmp}/a_file"],
        "--workdir={tmp}/a_file: {tmp}/a_file is a file, not a directory; give a new directory",
    ),
    ("show typo", ["experiments", "--show=typo"], "unknown experiment 'typo'; known experiments: "),
    ("show missing file", ["experiments", "--show=/nope.py"], "config file /nope.py does not exist"),
    (
        "init_from_hf truncated shard",
        ["hybridlm.train", "--config=tiny_hybrid", "--config.init_from_hf={hf}/shard_truncated"],
        "model-00001-of-00008.safetensors is not a readable safetensors file (",
    ),
    (
        "init_from_hf drops a model override",
        ["hybridlm.train", "--config=tiny_hybrid", "--config.init_from_hf={hf}/whole", "--config.model.num_layers=8"],
        "--config.model.num_layers=8 conflicts with config.init_from_hf={hf}/whole, whose config.json gives "
        "num_layers=2: the checkpoint fixes the architecture; drop the override",
    ),
]


@pytest.mark.parametrize("case, args, expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_line(case, args, expected, tmp_path, hf_dirs):
    """The command exits with one `error:` line; training commands get --workdir={tmp}/run unless they name one."""
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    (tmp_path / "empty.py").write_text("DESCRIPTION = 'no get_config here'\n")
    (tmp_path / "a_file").write_text("")
    hf = hf_dirs["whole"].parent
    args = [arg.format(tmp=tmp_path, hf=hf) for arg in args]
    if args[0] == "hybridlm.train" and not any(arg.startswith("--workdir=") for arg in args):
        args.append(f"--workdir={tmp_path / 'run'}")
    line = _cli(*args)
    assert expected.format(tmp=tmp_path, hf=hf) in line, line
    assert not (tmp_path / "run").exists()  # nothing was built


# Config values: refused by run_config.validate, before any data is read or anything compiled.

CONFIG_CASES = [
    ("lr inf", "optim.lr", math.inf, "config.optim.lr=inf must be positive and finite, e.g. 3e-4"),
    ("lr nan", "optim.lr", math.nan, "config.optim.lr=nan must be positive and finite"),
    ("b1 above 1", "optim.b1", 1.5, "config.optim.b1=1.5 must be in [0, 1), e.g. 0.9"),
    ("b2 negative", "optim.b2", -0.1, "config.optim.b2=-0.1 must be in [0, 1), e.g. 0.95"),
    ("eps zero", "optim.eps", 0.0, "config.optim.eps=0.0 must be positive and finite, e.g. 1e-8"),
    ("grad_clip negative", "optim.grad_clip", -1.0, "config.optim.grad_clip=-1.0 must be positive"),
    ("weight_decay negative", "optim.weight_decay", -0.1, "config.optim.weight_decay=-0.1 must be 0 or more"),
    ("z_loss negative", "optim.z_loss", -1e-5, "config.optim.z_loss=-1e-05 must be 0 or more"),
    ("norm_eps negative", "model.norm_eps", -1e-6, "config.model.norm_eps=-1e-06 must be positive and finite"),
    ("gdn norm_eps zero", "model.gdn.norm_eps", 0.0, "config.model.gdn.norm_eps=0.0 must be positive and finite"),
    ("init_std negative", "model.init_std", -0.02, "config.model.init_std=-0.02 must be positive and finite"),
    ("param_dtype float16", "model.param_dtype", "float16", "config.model.param_dtype='float16' is not supported"),
    ("dtype float16", "model.dtype", "float16", "config.model.dtype='float16' is not supported: float16 compute"),
    ("eos_token with byte", "data.eos_token", "</s>", "config.data.eos_token='</s>' is only read with a Hugging Face"),
    ("garbage tokenizer", "data.tokenizer", "{tmp}/tokenizer.json", "/tokenizer.json is not a Hugging Face tokenizer"),
]


@pytest.mark.parametrize("case, key, value, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value_is_refused(case, key, value, expected, tmp_path):
    """`key` set to `value` in the small run config fails validation with one line naming it."""
    config = small_config()
    if key == "data.tokenizer":
        (tmp_path / "tokenizer.json").write_text("{not json")
        config.data.update(source="text", paths=(str(tmp_path / "*.txt"),), eos_token="<|endoftext|>")
        value = value.format(tmp=tmp_path)
    *sections, field = key.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[field] = value
    with pytest.raises(ConfigError) as error:
        run_config.validate(config)
    assert expected in _one_line(error)


# Data files, Hugging Face checkpoints, the workdir's checkpoint and the Python API: each raises a one-line
# ValueError from the function that reads them.


def _token_files(tmp_path: pathlib.Path, tokens: np.ndarray, dtype: str, max_token_id: int | None = None) -> None:
    """A headerless token file, with a metadata.json recording `max_token_id` as its largest id when given."""
    tokens.tofile(tmp_path / "part-00000.npy")
    if max_token_id is not None:
        entry = {"num_tokens": tokens.size, "num_documents": 1, "max_token_id": max_token_id}
        meta = dict(dtype=dtype, tokenizer="byte", eos_id=EOS, vocab_size=258, files={"part-00000.npy": entry})
        write_metadata(tmp_path, meta)


def _read_token_files(tmp_path, dtype):
    """Loads the data of the small run config from the token files in `tmp_path`, read as `dtype`."""
    config = small_config()
    config.data.update(source="token_files", paths=(str(tmp_path / "*.npy"),), dtype=dtype, max_bytes=None)
    load_data(config)


def _uint32_declared_uint16(tmp_path, hf_dirs):
    _token_files(tmp_path, np.random.default_rng(0).integers(0, 257, 4096).astype(np.uint32), "uint16")
    _read_token_files(tmp_path, "uint16")


def _metadata_under_reports(tmp_path, hf_dirs):
    _token_files(tmp_path, np.array([5, 400, 7, EOS] * 1000, np.uint16), "uint16", max_token_id=200)
    _read_token_files(tmp_path, None)


def _init_from_hf(name):
    """Builds a Trainer that starts from the Hugging Face export `name` of `hf_dirs`."""

    def start(tmp_path, hf_dirs):
        config = small_config()
        config.init_from_hf = str(hf_dirs[name])
        Trainer(config, tmp_path / "run")

    return start


def _num_steps_below_checkpoint(tmp_path, hf_dirs):
    """Builds a Trainer for 3 steps in a workdir with a checkpoint at step 5."""
    config = small_config()
    workdir = tmp_path / "run"
    workdir.mkdir()
    checkpoint.record_config(workdir, config)
    saved = checkpoint.Checkpointer(workdir, keep=1)
    saved.save(5, {"step": np.int32(5)}, {"iterator": {"next_index": 5}})
    saved.close()
    before = (workdir / "config.json").read_text()
    config.train.num_steps = 3
    try:
        Trainer(config, workdir)
    finally:
        assert (workdir / "config.json").read_text() == before  # refused before config.json is rewritten


def _logits_of(token):
    """Scores a row ending in `token` with the Hugging Face export, through hybridlm.load_model."""

    def score(tmp_path, hf_dirs):
        api.load_model(hf_dirs["whole"]).logits([[1, 2, token]])

    return score


def _export_to_a_file(tmp_path, hf_dirs):
    (tmp_path / "out").write_text("")
    export_workdir(tmp_path / "run", tmp_path / "out")  # tools/export_hf.py prints its ValueError as one line


READ_CASES = [
    ("uint32 file declared uint16", _uint32_declared_uint16, "looks like uint32 tokens read as uint16"),
    (
        "metadata under-reports the largest id",
        _metadata_under_reports,
        "part-00000.npy holds token id 400 but its metadata.json says max_token_id=200; rewrite the metadata: "
        "python tools/prepare_data.py --index",
    ),
    ("init_from_hf shard missing", _init_from_hf("shard_missing"), "which is not in"),
    ("init_from_hf shard truncated", _init_from_hf("shard_truncated"), "is not a readable safetensors file"),
    ("init_from_hf no weights", _init_from_hf("no_weights"), "has neither model.safetensors nor model.safetensors"),
    (
        "num_steps below the checkpoint",
        _num_steps_below_checkpoint,
        "config.train.num_steps=3 is below step 5, the latest checkpoint in",
    ),
    ("logits of an id past the vocab", _logits_of(320), "token id 320 at [0, 2] is outside the model's vocab: ids go"),
    ("logits of a negative id", _logits_of(-1), "token id -1 at [0, 2] is outside the model's vocab: ids go from 0"),
    ("export --out is a file", _export_to_a_file, "out is a file, not a directory; export into a new directory"),
]


@pytest.mark.parametrize("case, action, expected", READ_CASES, ids=[c[0] for c in READ_CASES])
def test_bad_file_or_value_is_refused(case, action, expected, tmp_path, hf_dirs):
    """`action` reads a bad file or value and raises a one-line ValueError naming it."""
    with pytest.raises(ValueError) as error:
        action(tmp_path, hf_dirs)
    assert expected in _one_line(error)
