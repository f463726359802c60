"""The scaling ladder (experiments/ladder.py): its size, batch and lr rules, its WSD decays and branch points, the
`NAME:ARG` form of experiment names, and the Python code corpus (hybridlm.data.code_corpus)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import config_dict

import experiments
from experiments import ladder
from hybridlm import named_configs
from hybridlm.data import code_corpus
from hybridlm.data.pipeline import resolve_tokenizer
from hybridlm.data.token_files import open_token_files
from hybridlm.model import ModelConfig
from hybridlm.optim import learning_rate_schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sizes_grow_together_and_architectures_share_each_shape():
    previous = {arch: 0 for arch in ladder.ARCHS}
    for size in ladder.SIZES:
        shapes = set()
        for arch in ladder.ARCHS:
            config = experiments.get_config(f"ladder:{arch}-{size}")
            model = ModelConfig.from_config(config.model)
            shapes.add((model.d_model, model.num_layers, model.num_heads, model.head_dim))
            assert config.ladder.params > previous[arch]
            previous[arch] = config.ladder.params
            assert model.gdn.allow_neg_eigval
        assert len(shapes) == 1, shapes
        (d_model, num_layers, _, head_dim), = shapes
        assert head_dim == 64 and num_layers % 4 == 0
    assert [ladder.SIZES[s] for s in ladder.SIZES] == [(64, 4), (128, 8), (192, 12), (256, 16)]
    counts = {size: experiments.get_config(f"ladder:transformer-{size}").ladder.params for size in ladder.SIZES}
    for size, params in counts.items():  # each name is the transformer's parameters in millions, to two digits
        assert abs(params / 1e6 - float(size.removesuffix("M"))) < 0.05 * params / 1e6, (size, params)
    assert max(counts.values()) >= 15 * min(counts.values())  # the span the scaling fit needs


def test_batch_and_lr_rules():
    rules = ladder.Ladder()
    assert rules.batch_seqs(108e6) == 320  # 2048 x 160 tokens in sequences of 1024
    assert rules.lr(108e6) == pytest.approx(0.0047 / 2)
    assert rules.lr(108e6 / 8) == pytest.approx(2 * 0.0047 / 2)  # N^(-1/3)
    assert rules.batch_seqs(108e6 / 8) == 80  # N^(2/3): a quarter
    assert rules.batch_seqs(1e5) == 16  # held to the minimum
    assert all(rules.batch_seqs(n) % 8 == 0 for n in (7e6, 2e7, 5e7))
    config = experiments.get_config("ladder:hybrid-2.8M")
    params = config.ladder.params
    assert config.data.batch_size == rules.batch_seqs(params)
    assert config.optim.lr == pytest.approx(rules.lr(params))


def _lr(config: config_dict.ConfigDict, step: int) -> float:
    return float(learning_rate_schedule(config.optim, config.train.num_steps)(step))


def test_wsd_decays_branch_from_the_stable_runs_kept_checkpoints():
    stable = experiments.get_config("ladder:gdn-0.74M")
    tokens_per_step = stable.data.batch_size * stable.data.seq_len
    branches = []
    for multiple in ladder.MULTIPLES:
        decay = experiments.get_config(f"ladder:gdn-0.74M/decay{multiple:g}x")
        end, branch, peak = decay.train.num_steps, decay.init_from_step, decay.optim.lr
        assert end == round(multiple * 20 * decay.ladder.params / tokens_per_step)
        assert end - branch == round(0.2 * end)
        warmup = decay.optim.warmup_steps
        assert _lr(decay, 0) == 0.0
        assert _lr(decay, warmup) == pytest.approx(peak)
        assert _lr(decay, branch) == pytest.approx(peak)
        assert _lr(decay, (branch + end) // 2) == pytest.approx(peak * (1 - ((branch + end) // 2 - branch) / (end - branch)))
        assert _lr(decay, end) == pytest.approx(0.0, abs=1e-12)
        for step in (1, warmup // 2, warmup + 1, branch - 1, branch):  # the stable run's lr up to the branch
            assert _lr(stable, step) == pytest.approx(_lr(decay, step))
        branches.append(branch)
    assert stable.train.keep_steps == tuple(branches)
    assert stable.train.num_steps == branches[-1]
    assert _lr(stable, stable.train.num_steps) == pytest.approx(stable.optim.lr)


def test_experiment_names_take_an_arg():
    assert experiments.get_config("ladder:transformer-2.8M").model.layer_pattern == ("swa", "swa", "swa", "attn")
    assert named_configs.resolve("ladder:hybrid-0.74M").endswith("experiments/ladder.py:hybrid-0.74M")
    with pytest.raises(named_configs.ConfigFileError, match="hybrid-3M.*is not ARCH-SIZE"):
        named_configs.resolve("ladder:hybrid-3M")
    shown = subprocess.run(
        [sys.executable, "-m", "experiments", "--show=ladder:hybrid-0.74M/decay1x", "--config.train.log_every=7"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert "init_from_step: " in shown and "log_every: 7" in shown and "# parameters:" in shown


def _fake_sources(root: pathlib.Path, changed: str = "") -> pathlib.Path:
    """24 distinct .py files, a duplicate and an empty file."""
    source = root / "src"
    (source / "pkg").mkdir(parents=True)
    for i in range(24):
        body = f"def function_{i}(x):\n    return x * {i} + {i * i}  # file {i}\n" * (5 + i % 4)
        (source / "pkg" / f"mod_{i}.py").write_text(body + (changed if i == 3 else ""))
    (source / "copy.py").write_text((source / "pkg" / "mod_5.py").read_text())
    (source / "empty.py").write_text("")
    (source / "notes.txt").write_text("not python")
    return source


def _prepare(tmp_path: pathlib.Path, name: str, changed: str = "") -> dict:
    source = _fake_sources(tmp_path / name, changed)
    return code_corpus.prepare_code_corpus(tmp_path / name / "out", 300, roots=[("fake", str(source))], heldout_fraction=0.3)


def test_code_corpus_dedups_splits_by_file_and_fingerprints(tmp_path):
    first, again = _prepare(tmp_path, "a"), _prepare(tmp_path, "b")
    assert first["fingerprint"] == again["fingerprint"]
    assert first["fingerprint"]["files"] == 24  # the copy and the empty file dropped
    changed = _prepare(tmp_path, "c", changed="# one more line\n")
    assert changed["fingerprint"]["content_sha256"] != first["fingerprint"]["content_sha256"]

    files = code_corpus.collect([("fake", str(tmp_path / "a" / "src"))])
    heldout = [f for f in files if code_corpus.is_heldout(f.digest, 0.3)]
    assert 0 < len(heldout) < len(files) and first["heldout_files"] == len(heldout)
    paths = {f.path for f in files}
    assert "copy.py" in paths and "pkg/mod_5.py" not in paths and "empty.py" not in paths  # the first copy kept

    out = tmp_path / "a" / "out"
    data = config_dict.ConfigDict(
        dict(source="token_files", paths=(str(out / "*.npy"),), tokenizer=None, eos_token=None, dtype=None)
    )
    tokenizer = resolve_tokenizer(data, 320)  # the trainer's reading of metadata.json
    assert data.tokenizer == str(out / "tokenizer.json") and tokenizer.eos_token == code_corpus.EOS_TOKEN
    parts = sorted(str(p) for p in out.glob("*.npy"))
    stream = open_token_files(parts, dtype=None, vocab_size=320, eos_id=tokenizer.eos_id, key="paths")
    train, held = stream.split(0.3)  # as the token_files source cuts at heldout_fraction
    metadata = json.loads((out / "metadata.json").read_text())
    assert train.size == metadata["files"]["part-00000.npy"]["num_tokens"]  # exactly the training files
    heldout_text = tokenizer.decode(held.read(0, held.size))
    training_text = tokenizer.decode(train.read(0, train.size))
    for f in files:  # no file in both splits (a split's tail may be trimmed)
        assert f.text[:40] not in (training_text if code_corpus.is_heldout(f.digest, 0.3) else heldout_text)


@pytest.mark.parametrize("train,heldout", [(1000, 200), (1000, 10), (7, 3), (95, 5)])
def test_split_sizes_put_the_cut_between_the_files(train, heldout):
    keep_train, keep_heldout = code_corpus.split_sizes(train, heldout, 0.05)
    assert keep_train <= train and keep_heldout <= heldout and (keep_train == train or keep_heldout == heldout)
    assert int((keep_train + keep_heldout) * (1 - 0.05)) == keep_train
    assert np.isclose(keep_heldout / (keep_train + keep_heldout), 0.05, atol=0.02) or keep_train < 100
