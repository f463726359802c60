"""Bad input gets one line, `error: ...`, naming the key, file or value and the fix: no traceback, nothing accepted
silently (issue 16, item 6).

Every row is one bad input: (description, how to produce it, words of the expected message). Most run in-process:
config values through config_checks.validate, data files, Hugging Face checkpoints and the Python API through the
function that reads them (each raises the ValueError that the CLI prints as its one line), and the command lines of
hybridlm.train, tools/export_hf.py and tools/prepare_data.py through their own parse and main functions. Only
`python -m experiments`, whose flags cannot share a process with hybridlm.train's, and one real `python -m
hybridlm.train`, run in a subprocess.
"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from conftest import load_tool, small_config
from hybridlm import api, checkpoint, config_checks, train
from hybridlm.data.pipeline import load_data
from hybridlm.data.token_files import write_metadata
from hybridlm.hf import convert
from hybridlm.hf.export import export_params, export_workdir
from hybridlm.model import ModelConfig, abstract_params
from hybridlm.model.config import ConfigError
from hybridlm.sampling import Sampling
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


def _bad_files(tmp_path: pathlib.Path) -> None:
    """The files that the command-line rows name: a config file with a syntax error, one without get_config, a file
    where a directory belongs."""
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    (tmp_path / "empty.py").write_text("DESCRIPTION = 'no get_config here'\n")
    (tmp_path / "a_file").write_text("")


# `python -m experiments` (its flags clash with hybridlm.train's in one process) and one real `python -m
# hybridlm.train`, whose one line shows that the in-process rows below see what a user sees: a subprocess each.

SUBPROCESS_CASES = [
    (
        "train: config file missing",
        ["hybridlm.train", "--config=/nope.py", "--workdir={tmp}/run"],
        "config file /nope.py does not exist; give",
    ),
    ("show typo", ["experiments", "--show=typo"], "unknown experiment 'typo'; known experiments: "),
    ("show missing file", ["experiments", "--show=/nope.py"], "config file /nope.py does not exist"),
    ("plan without show", ["experiments", "--plan"], "--plan needs --show=NAME: the experiment to plan, e.g."),
    ("plan on 0 devices", ["experiments", "--show=tiny_hybrid", "--plan", "--devices=0"], "--devices=0 must be"),
    ("generate from no model", ["hybridlm.generate", "--model={tmp}/none", "--prompt=hi"], "is not a Hugging Face"),
]


@pytest.mark.parametrize("case, args, expected", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_command_refuses_with_one_line(case, args, expected, tmp_path):
    """The command exits with one `error:` line and builds nothing."""
    line = _cli(*[arg.format(tmp=tmp_path) for arg in args])
    assert expected in line, line
    assert not (tmp_path / "run").exists()


# `python -m hybridlm.train`, in-process: its parse_flags and main, as app.run calls them.

TRAIN_CASES = [
    ("config file syntax", ["--config={tmp}/syntax.py"], "syntax.py, line 1: invalid syntax; fix"),
    ("no get_config", ["--config={tmp}/empty.py"], "empty.py defines no get_config(); add"),
    ("config names no experiment", ["--config={tmp}/a_file"], "unknown experiment '{tmp}/a_file'; known experiments"),
    ("config argument refused", ["--config=tiny_hybrid:foo"], "--config=tiny_hybrid:foo: get_config() takes 0"),
    (
        "workdir is a file",
        ["--config=tiny_hybrid", "--workdir={tmp}/a_file"],
        "--workdir={tmp}/a_file: {tmp}/a_file is a file, not a directory; give a new directory",
    ),
    ("workdir inside a file", ["--config=tiny_hybrid", "--workdir={tmp}/a_file/run"], "a_file is a file, not a dir"),
    ("no workdir", ["--config=tiny_hybrid"], "both --config (an experiment name from `python -m experiments`) and"),
    ("no config", ["--workdir={tmp}/run"], "both --config (an experiment name"),
    ("unknown flag", ["--config=tiny_hybrid", "--bogus=1"], "Unknown command line flag 'bogus' (keys and defaults:"),
    ("unknown config key", ["--config=tiny_hybrid", "--config.model.nokey=1"], "the config has no key 'nokey';"),
    ("float override not a number", ["--config=tiny_hybrid", "--config.optim.lr=abc"], "--config.optim.lr=abc: could"),
    ("int override not a number", ["--config=tiny_hybrid", "--config.data.seq_len=1.5"], "--config.data.seq_len=1.5"),
    ("bool override not a bool", ["--config=tiny_hybrid", "--config.model.use_rope=maybe"], "Non-boolean argument"),
    ("num_processes not a number", ["--config=tiny_hybrid", "--num_processes=abc"], "--num_processes=abc: invalid"),
    ("peer timeout below 1 s", ["--config=tiny_hybrid", "--peer_timeout_s=0.5"], "--peer_timeout_s=0.5: 0.5 is not"),
    (
        "cluster flag alone",
        ["--config=tiny_hybrid", "--coordinator_address=h:1"],
        "--coordinator_address, --num_processes and --process_id go together: give all three",
    ),
    (
        "coordinator without port",
        ["--config=tiny_hybrid", "--coordinator_address=h", "--num_processes=2", "--process_id=0"],
        "--coordinator_address=h is not host:port; give process 0's host and a free port",
    ),
    (
        "process_id out of range",
        ["--config=tiny_hybrid", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
        "--process_id=2 with --num_processes=2: number the processes 0 to num_processes - 1",
    ),
    ("seq_len above the model's", ["--config=tiny_hybrid", "--config.data.seq_len=4096"], "sequence length 4096"),
    (
        "init_from_hf truncated shard",
        ["--config=tiny_hybrid", "--config.init_from_hf={hf}/shard_truncated"],
        "model-00001-of-00008.safetensors is not a readable safetensors file (",
    ),
    (
        "init_from_hf drops a model override",
        ["--config=tiny_hybrid", "--config.init_from_hf={hf}/whole", "--config.model.num_layers=8"],
        "--config.model.num_layers=8 conflicts with config.init_from_hf={hf}/whole, whose config.json gives "
        "num_layers=2: the checkpoint fixes the architecture; drop the override",
    ),
]


@pytest.fixture
def fresh_flags():
    """hybridlm.train's flags unparsed before and after the row, and the config-override flags that config_flags
    defines while parsing deleted, so that each row parses as a new process would."""

    def reset() -> None:
        flags.FLAGS.unparse_flags()
        for name in [name for name in flags.FLAGS if name.startswith("config.")]:
            delattr(flags.FLAGS, name)

    reset()
    yield
    reset()


@pytest.mark.parametrize("case, args, expected", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_with_one_line(case, args, expected, tmp_path, hf_dirs, fresh_flags, capsys, monkeypatch):
    """hybridlm.train exits with code 2 and one `error:` line; a row without --workdir=... gets {tmp}/run, unless it
    is about the missing one."""
    _bad_files(tmp_path)
    hf = hf_dirs["whole"].parent
    args = [arg.format(tmp=tmp_path, hf=hf) for arg in args]
    if not any(arg.startswith("--workdir=") for arg in args) and case != "no workdir":
        args.append(f"--workdir={tmp_path / 'run'}")
    monkeypatch.setattr(sys, "argv", ["hybridlm.train", *args])
    with pytest.raises(SystemExit) as exit:
        train.main(train.parse_flags(sys.argv))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected.format(tmp=tmp_path, hf=hf) in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing was built


# tools/export_hf.py and tools/prepare_data.py, in-process: argparse's usage and one `error:` line for a bad flag,
# one `error: ...` line (exit code 2) for a bad file.

TOOL_CASES = [
    ("export: no --out", "export_hf", ["--workdir={tmp}"], "the following arguments are required: --out"),
    ("export: dtype fp16", "export_hf", ["--workdir={tmp}", "--out={tmp}/o", "--dtype=fp16"], "invalid choice: 'fp16'"),
    ("export: step not a number", "export_hf", ["--workdir={tmp}", "--out={tmp}/o", "--step=x"], "--step: invalid int"),
    ("export: shard size 0", "export_hf", ["--workdir={tmp}", "--out={tmp}/o", "--max_shard_gb=0"], "--max_shard_gb=0"),
    ("export: no workdir", "export_hf", ["--workdir={tmp}/nope", "--out={tmp}/o"], "nope is not a training workdir"),
    ("prepare: no source", "prepare_data", ["--out={tmp}/o"], "one of the arguments --input --tfds"),
    ("prepare: index without dtype", "prepare_data", ["--index={tmp}"], "--index needs --dtype"),
    ("prepare: out with index", "prepare_data", ["--index={tmp}", "--out={tmp}/o"], "give --out with --input, --tfds"),
    ("prepare: dtype int8", "prepare_data", ["--index={tmp}", "--dtype=int8"], "invalid choice: 'int8'"),
    ("prepare: out is a file", "prepare_data", ["--input={tmp}", "--out={tmp}/a_file"], "a_file is a file, not a dir"),
    ("prepare: workers 0", "prepare_data", ["--input={tmp}", "--out={tmp}/o", "--workers=0"], "--workers=0 and --par"),
    ("prepare: part_mb 0", "prepare_data", ["--input={tmp}", "--out={tmp}/o", "--part_mb=0"], "--part_mb=0.0 must be"),
    ("prepare: no input dir", "prepare_data", ["--input={tmp}/nope", "--out={tmp}/o"], "nope: no such directory"),
    ("prepare: index of no files", "prepare_data", ["--index={tmp}", "--dtype=uint16"], "no *.npy token files there"),
    ("prepare: corpus vocab 10", "prepare_data", ["--corpus=python_code", "--out={tmp}/o", "--vocab_size=10"], "(256,"),
    (
        "prepare: corpus package missing",
        "prepare_data",
        ["--corpus=python_code", "--out={tmp}/o", "--packages=numpy,no_such_package"],
        "the corpus package 'no_such_package' is not installed; install it",
    ),
]


@pytest.mark.parametrize("case, tool, args, expected", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_tool_refuses_with_one_error_line(case, tool, args, expected, tmp_path, capsys):
    """The tool exits (or returns) 2 with exactly one `error:` line, naming the flag or file, and writes nothing."""
    _bad_files(tmp_path)
    try:
        code = load_tool(tool).main([arg.format(tmp=tmp_path) for arg in args])
    except SystemExit as exit:  # argparse: usage, then one error line
        code = exit.code
    errors = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "o").exists()


# Config values: refused by config_checks.validate, before any data is read or anything compiled.

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
    ("garbage tokenizer_config", "data.tokenizer", "{tmp}", "tokenizer_config.json is not valid JSON (Expecting"),
    ("tokenizer missing", "data.tokenizer", "/nope/tok.json", "config.data.tokenizer='/nope/tok.json': no such file"),
    ("lr zero", "optim.lr", 0.0, "config.optim.lr=0.0 must be positive and finite"),
    ("lr negative", "optim.lr", -1e-3, "config.optim.lr=-0.001 must be positive and finite"),
    ("b1 nan", "optim.b1", math.nan, "config.optim.b1=nan must be in [0, 1)"),
    ("b2 one", "optim.b2", 1.0, "config.optim.b2=1.0 must be in [0, 1)"),
    ("eps inf", "optim.eps", math.inf, "config.optim.eps=inf must be positive and finite"),
    ("grad_clip zero", "optim.grad_clip", 0.0, "config.optim.grad_clip=0.0 must be positive"),
    ("grad_clip nan", "optim.grad_clip", math.nan, "config.optim.grad_clip=nan must be positive"),
    ("weight_decay inf", "optim.weight_decay", math.inf, "config.optim.weight_decay=inf must be 0 or more"),
    ("weight_decay nan", "optim.weight_decay", math.nan, "config.optim.weight_decay=nan must be 0 or more"),
    ("z_loss inf", "optim.z_loss", math.inf, "config.optim.z_loss=inf must be 0 or more"),
    ("warmup negative", "optim.warmup_steps", -1, "config.optim.warmup_steps=-1 must be in [0, config.train.num_steps"),
    ("warmup = num_steps", "optim.warmup_steps", 6, "config.optim.warmup_steps=6 must be in [0, config"),
    ("schedule typo", "optim.schedule", "cosin", "config.optim.schedule='cosin' is not one of ('cosine'"),
    ("final_lr_ratio above 1", "optim.final_lr_ratio", 1.5, "config.optim.final_lr_ratio=1.5 must be in [0, 1]"),
    ("final_lr_ratio negative", "optim.final_lr_ratio", -0.1, "config.optim.final_lr_ratio=-0.1 must be in [0, 1]"),
    ("final_lr_ratio nan", "optim.final_lr_ratio", math.nan, "config.optim.final_lr_ratio=nan must be in [0, 1]"),
    ("decay_fraction zero", "optim.decay_fraction", 0.0, "config.optim.decay_fraction=0.0 must be in (0, 1]"),
    ("decay_fraction above 1", "optim.decay_fraction", 1.5, "config.optim.decay_fraction=1.5 must be in (0, 1]"),
    ("schedule_steps in warmup", "optim.schedule_steps", 1, "config.optim.schedule_steps=1 must be above config.opt"),
    ("split_cosine, no midpoint", "optim.schedule", "split_cosine", "config.optim.midpoint_step=None must lie between"),
    ("num_steps zero", "train.num_steps", 0, "config.optim.warmup_steps=2 must be in [0, config.train.num_steps=0)"),
    ("log_every zero", "train.log_every", 0, "config.train.log_every=0 must be positive"),
    ("eval_every zero", "train.eval_every", 0, "config.train.eval_every=0 must be positive"),
    ("eval_batches zero", "train.eval_batches", 0, "config.train.eval_batches=0 must be positive"),
    ("checkpoint_every zero", "train.checkpoint_every", 0, "config.train.checkpoint_every=0 must be positive"),
    ("keep_checkpoints zero", "train.keep_checkpoints", 0, "config.train.keep_checkpoints=0 must be positive"),
    ("max_consecutive_skips 0", "train.max_consecutive_skips", 0, "config.train.max_consecutive_skips=0 must be pos"),
    ("checkpoint_minutes zero", "train.checkpoint_minutes", 0.0, "config.train.checkpoint_minutes=0.0 must be posit"),
    ("peak_flops negative", "train.peak_flops_per_device", -1.0, "config.train.peak_flops_per_device=-1.0 must be po"),
    ("seed negative", "seed", -1, "config.seed=-1 must be 0 or more"),
    ("d_model zero", "model.d_model", 0, "config.model.d_model=0 must be positive"),
    ("d_model not divisible", "model.d_model", 30, "config.model.d_model=30 is not divisible by"),
    ("num_layers zero", "model.num_layers", 0, "config.model.num_layers=0 is not a positive multiple"),
    ("num_layers off pattern", "model.num_layers", 3, "config.model.num_layers=3 is not a positive multiple"),
    ("layer_pattern empty", "model.layer_pattern", (), "config.model.layer_pattern is empty; give one period"),
    ("layer_pattern unknown", "model.layer_pattern", ("gdn", "mamba"), "unknown layer types ['mamba']; use ('gdn'"),
    ("num_heads zero", "model.num_heads", 0, "config.model.d_model=32 is not divisible by config.model.num_heads=0"),
    ("num_kv_heads zero", "model.num_kv_heads", 0, "config.model.num_kv_heads=0 must be positive"),
    ("num_kv_heads not a divisor", "model.num_kv_heads", 3, "config.model.num_heads=4 is not a multiple of config.m"),
    ("head_dim zero", "model.head_dim", 0, "config.model.head_dim=0 must be positive"),
    ("head_dim odd with RoPE", "model.head_dim", 7, "config.model.head_dim=7 is odd; RoPE needs an even head dim"),
    ("mlp_hidden zero", "model.mlp_hidden", 0, "config.model.mlp_hidden=0 must be positive"),
    ("vocab_size zero", "model.vocab_size", 0, "config.model.vocab_size=0 must be positive"),
    ("vocab below tokenizer", "model.vocab_size", 100, "config.model.vocab_size=100 is below the 258 ids of the tok"),
    ("max_seq_len zero", "model.max_seq_len", 0, "config.model.max_seq_len=0 must be positive"),
    ("max_seq_len below seq_len", "model.max_seq_len", 16, "sequence length 32 is outside what the model takes"),
    ("norm_eps inf", "model.norm_eps", math.inf, "config.model.norm_eps=inf must be positive and finite"),
    ("init_std nan", "model.init_std", math.nan, "config.model.init_std=nan must be positive and finite"),
    ("rope_theta zero", "model.rope_theta", 0.0, "config.model.rope_theta=0.0 must be positive and finite"),
    ("rope_theta inf", "model.rope_theta", math.inf, "config.model.rope_theta=inf must be positive and finite"),
    ("dtype float64", "model.dtype", "float64", "config.model.dtype='float64' is not one of ('float32', 'bfloat16')"),
    ("param_dtype int8", "model.param_dtype", "int8", "config.model.param_dtype='int8' is not one of ('float32'"),
    ("remat typo", "model.remat", "everything", "config.model.remat='everything' is not one of ('none'"),
    ("attention_impl typo", "model.attention_impl", "flash", "config.model.attention_impl='flash' is not one of"),
    ("loss_chunk_tokens zero", "model.loss_chunk_tokens", 0, "config.model.loss_chunk_tokens=0 must be positive"),
    ("gdn_norm typo", "model.gdn_norm", "mid", "config.model.gdn_norm='mid' is not one of ('pre', 'post')"),
    ("gdn key heads zero", "model.gdn.num_key_heads", 0, "config.model.gdn.num_key_heads=0 must be positive"),
    ("gdn value heads", "model.gdn.num_value_heads", 3, "config.model.gdn.num_value_heads=3 is not a multiple of"),
    ("gdn key_head_dim zero", "model.gdn.key_head_dim", 0, "config.model.gdn.key_head_dim=0 must be positive"),
    ("gdn value_head_dim zero", "model.gdn.value_head_dim", 0, "config.model.gdn.value_head_dim=0 must be positive"),
    ("gdn conv_kernel zero", "model.gdn.conv_kernel", 0, "config.model.gdn.conv_kernel=0 must be positive"),
    ("gdn chunk_size zero", "model.gdn.chunk_size", 0, "config.model.gdn.chunk_size=0 must be positive"),
    ("gdn impl typo", "model.gdn.impl", "cuda", "config.model.gdn.impl='cuda' is not one of ('auto'"),
    ("gdn conv_impl typo", "model.gdn.conv_impl", "cuda", "config.model.gdn.conv_impl='cuda' is not one of ('auto'"),
    ("gdn norm_impl typo", "model.gdn.norm_impl", "cuda", "config.model.gdn.norm_impl='cuda' is not one of ('auto'"),
    ("batch_size zero", "data.batch_size", 0, "config.data.batch_size=0 must be positive"),
    ("batch_size negative", "data.batch_size", -1, "config.data.batch_size=-1 must be positive"),
    ("seq_len zero", "data.seq_len", 0, "sequence length 0 is outside what the model takes"),
    ("source typo", "data.source", "csv", "config.data.source='csv' is not one of ('builtin'"),
    ("heldout_fraction zero", "data.heldout_fraction", 0.0, "config.data.heldout_fraction=0.0 must be in (0, 1)"),
    ("heldout_fraction one", "data.heldout_fraction", 1.0, "config.data.heldout_fraction=1.0 must be in (0, 1)"),
    ("token dtype int64", "data.dtype", "int64", "config.data.dtype='int64' is not one of ('uint16', 'uint32')"),
    ("paths with builtin", "data.paths", ("/x/*.npy",), "config.data.paths=('/x/*.npy',) is only read by the sources"),
    ("weights without paths", "data.weights", (1.0,), "config.data.weights=(1.0,) must be one positive weight per"),
    ("max_bytes zero", "data.max_bytes", 0, "config.data.max_bytes=0 must be positive, e.g. 400000"),
    ("tfds without a name", "data.source", "tfds", "config.data.source='tfds' needs config.data.tfds_name"),
    ("task without a task", "data.source", "task", "config.data.source='task' needs config.data.task"),
    ("token_files without paths", "data.source", "token_files", "config.data.source='token_files' needs config.data.p"),
    ("mesh axis zero", "mesh.data", 0, "config.mesh (slices=1 x data=0 x fsdp=1 x tensor=1): sizes must be positive"),
    ("mesh two -1 axes", "mesh.fsdp", -1, "sizes must be positive, with at most one -1 (the rest)"),
    ("mesh more devices", "mesh.data", 3, "the axis sizes multiply to 3 but there are 1 devices; make the product 1"),
    ("mesh axis not dividing", "mesh.tensor", 2, "the fixed axes take 2 devices, which does not divide the 1 devices"),
    ("mesh rule names no axis", "mesh.rules", {"batch": ("nope",)}, "config.mesh.rules.batch=('nope',) names the me"),
    ("mesh rule no logical", "mesh.rules", {"bogus": ("data",)}, "config.mesh.rules.bogus: no parameter or activat"),
]


@pytest.mark.parametrize("case, key, value, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value_is_refused(case, key, value, expected, tmp_path):
    """`key` set to `value` in the small run config fails validation with one line naming it."""
    config = small_config()
    if key == "data.tokenizer":
        (tmp_path / "tokenizer.json").write_text("{not json")
        (tmp_path / "tokenizer_config.json").write_text("{not json")
        eos_token = None if value == "{tmp}" else "<|endoftext|>"  # None: read from tokenizer_config.json
        config.data.update(source="text", paths=(str(tmp_path / "*.txt"),), eos_token=eos_token)
        value = value.format(tmp=tmp_path)
    *sections, field = key.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[field] = value
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
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
        config.init_from_hf = str(hf_dirs["whole"].parent / name)
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


def _load_files(source: str, name: str, content: bytes, **data):
    """Loads the data of the small run config from one file `name` holding `content`, read as `source`."""

    def load(tmp_path, hf_dirs):
        (tmp_path / name).write_bytes(content)
        config = small_config()
        config.data.update(source=source, paths=(str(tmp_path / name),), max_bytes=None, **data)
        load_data(config)

    return load


def _load_task(tmp_path, hf_dirs):
    config = small_config()
    config.data.update(source="task", task="parityy", max_bytes=None)
    load_data(config)


def _load_paths(*paths: str):
    def load(tmp_path, hf_dirs):
        config = small_config()
        config.data.update(source="token_files", paths=tuple(p.format(tmp=tmp_path) for p in paths), max_bytes=None)
        load_data(config)

    return load


def _load_model(path: str, **kwargs):
    def load(tmp_path, hf_dirs):
        api.load_model(path.format(tmp=tmp_path, hf=hf_dirs["whole"].parent), **kwargs)

    return load


def _logits_too_long(tmp_path, hf_dirs):
    model = api.load_model(hf_dirs["whole"])
    model.logits(np.zeros((1, model.config.max_seq_len + 1), np.int32))


def _sampling(**kwargs):
    return lambda tmp_path, hf_dirs: Sampling(**kwargs)


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
    ("token file of odd size", _load_files("token_files", "t.npy", b"abc", dtype="uint16"), "has 3 bytes, not a who"),
    ("token file empty", _load_files("token_files", "t.npy", b"", dtype="uint16"), "every file is empty"),
    ("token file, no dtype", _load_files("token_files", "t.npy", b"\0" * 64), "set config.data.dtype to one of"),
    ("jsonl not JSON", _load_files("jsonl", "d.jsonl", b"{not json\n"), "d.jsonl:1 is not a JSON object"),
    ("jsonl without the field", _load_files("jsonl", "d.jsonl", b'{"body": "x"}\n'), "set config.data.text_field"),
    ("text too short", _load_files("text", "d.txt", b"x"), "lower data.batch_size/data.seq_len or add data"),
    ("data path missing", _load_paths("{tmp}/nope.npy"), "config.data.paths[0]: no such file"),
    ("data glob empty", _load_paths("{tmp}/*.npy"), "config.data.paths[0]: the glob"),
    ("task unknown", _load_task, "config.data.task='parityy' is not a task; set it to one of"),
    ("init_from_hf missing dir", _init_from_hf("nope"), "nope/config.json does not exist"),
    ("load_model of nothing", _load_model("{tmp}/nope"), "nope is not a Hugging Face model directory"),
    ("load_model step of HF", _load_model("{hf}/whole", step=3), "holds one set of weights; drop step=3"),
    ("logits past max_seq_len", _logits_too_long, "sequence length 1025 is outside what the model takes"),
    ("temperature negative", _sampling(temperature=-1.0), "temperature=-1.0 must be finite and >= 0"),
    ("top_k negative", _sampling(top_k=-1), "top_k=-1 must be >= 0"),
    ("top_p zero", _sampling(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
]


@pytest.mark.parametrize("case, action, expected", READ_CASES, ids=[c[0] for c in READ_CASES])
def test_bad_file_or_value_is_refused(case, action, expected, tmp_path, hf_dirs):
    """`action` reads a bad file or value and raises a one-line ValueError naming it."""
    with pytest.raises(ValueError) as error:
        action(tmp_path, hf_dirs)
    assert expected in _one_line(error)
