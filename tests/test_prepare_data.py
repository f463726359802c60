"""tools/prepare_data.py: text/JSONL folders and tfds splits into token files and metadata.json."""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import load_tool
from data_helpers import EOT, TEXTS, TFDS_NAME, build_tfds_dataset, data_config, train_bpe, write_raw
from hybridlm import config_checks
from hybridlm.data import ByteTokenizer, load_tokenizer, prepare
from hybridlm.data.pipeline import load_data
from hybridlm.data.token_files import read_metadata, write_metadata
from hybridlm.model.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    return load_tool("prepare_data")


def _text_folder(root: pathlib.Path) -> list[str]:
    """Text files, a nested JSONL file (with a blank line) and a hidden file; returns the documents in the order
    the tool reads them (sorted by relative path)."""
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text(TEXTS[0])
    (root / "c.md").write_text(TEXTS[2])
    (root / ".hidden").write_text("never read")
    lines = [json.dumps({"text": t}) for t in TEXTS[4:9]]
    (root / "b" / "docs.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    return [TEXTS[0], *TEXTS[4:9], TEXTS[2]]


def test_folder_to_token_files_in_parallel(tmp_path, cli, capsys):
    documents = _text_folder(tmp_path / "in")
    tokenizer_path = train_bpe(tmp_path / "bpe")
    args = ["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tokenizer", str(tokenizer_path)]
    assert cli.main([*args, "--eos_token", EOT, "--workers", "2"]) == 0
    assert "train on them with: python -m hybridlm.train" in capsys.readouterr().out

    tokenizer = load_tokenizer(str(tokenizer_path), EOT)
    expected = np.concatenate([np.append(ids, tokenizer.eos_id) for ids in tokenizer.encode_batch(documents)])
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert sorted(metadata["files"]) == ["part-00000.npy", "part-00001.npy", "part-00002.npy"]  # a.txt | jsonl | c.md
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / name, np.uint16) for name in sorted(metadata["files"])])
    np.testing.assert_array_equal(tokens, expected)
    assert metadata["dtype"] == "uint16" and metadata["eos_id"] == tokenizer.eos_id
    assert (metadata["tokenizer"], metadata["eos_token"]) == (str(tokenizer_path), EOT)
    assert (metadata["num_tokens"], metadata["num_documents"]) == (expected.size, 7)
    assert metadata["files"]["part-00001.npy"]["num_documents"] == 5
    assert max(f["max_token_id"] for f in metadata["files"].values()) == expected.max()

    config = data_config(source="token_files", paths=(str(tmp_path / "out" / "*.npy"),), seq_len=8, batch_size=2)
    config.data.heldout_fraction = 0.2
    batch = load_data(config).train[0]  # the tokenizer and its eos from the metadata
    assert batch["inputs"].shape == (2, 8)
    assert (config.data.tokenizer, config.data.eos_token) == (str(tokenizer_path), EOT)

    assert cli.main([*args, "--eos_token", EOT]) == 2  # the output already holds token files
    assert "already holds token files" in capsys.readouterr().err
    assert cli.main(["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_tfds_split_to_token_files(tmp_path, cli):
    build_tfds_dataset(tmp_path / "tfds")
    args = ["--tfds", TFDS_NAME, "--data_dir", str(tmp_path / "tfds"), "--text_field", "body", "--workers", "1"]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["num_documents"] == 4 * len(TEXTS) and len(metadata["files"]) == 4
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / name, np.uint16) for name in sorted(metadata["files"])])
    assert int(np.sum(tokens == 256)) == 4 * len(TEXTS)
    assert sum(len(t.encode()) for t in TEXTS * 4) + 4 * len(TEXTS) == tokens.size


def test_index_writes_metadata_of_existing_token_files(tmp_path, cli):
    """Token files made elsewhere (headerless, as Olmo's) get a metadata.json that training then trusts."""
    docs = [np.array([5, 7, 256], np.uint32), np.array([1, 256, 9, 9, 256], np.uint32)]
    for i, tokens in enumerate(docs):
        tokens.tofile(tmp_path / f"shard-{i}.npy")
    assert cli.main(["--index", str(tmp_path), "--dtype", "uint32"]) == 0
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["files"] == {
        "shard-0.npy": {"num_tokens": 3, "num_documents": 1, "max_token_id": 256},
        "shard-1.npy": {"num_tokens": 5, "num_documents": 2, "max_token_id": 256},
    }
    assert (metadata["dtype"], metadata["eos_id"], metadata["num_tokens"]) == ("uint32", 256, 8)
    config = data_config(source="token_files", paths=(str(tmp_path / "*.npy"),), seq_len=1, batch_size=1)
    config.data.heldout_fraction = 0.25
    train = load_data(config).train  # dtype from the metadata; windows [5, 7], [256, 1], [256, 9]
    assert sorted(int(train[step]["inputs"][0, 0]) for step in range(3)) == [5, 256, 256]


def test_printed_train_command_trains_on_hf_token_files(tmp_path, cli, capsys, monkeypatch):
    """Token files made with a Hugging Face tokenizer given by a relative path (its eos token from the
    tokenizer_config.json beside it; 361 ids, more than tiny_hybrid's 320): the printed command trains on them as
    printed, from the repository root, with the tokenizer and eos from their metadata.json recorded in the run's
    config.json. Appended flags only make the run small (one step of a 2-layer model on 16-token rows) and move the
    workdir into tmp_path."""
    monkeypatch.chdir(tmp_path)
    train_bpe(tmp_path / "bpe", vocab_size=400, with_config=True)
    for i, text in enumerate(TEXTS):
        (tmp_path / "in" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i:02d}.txt").write_text(text)
    assert cli.main(["--input", "in", "--out", "tokens", "--tokenizer", "bpe", "--workers", "1"]) == 0
    argv = shlex.split(capsys.readouterr().out.split("train on them with: ")[1])
    assert argv[:3] == ["python", "-m", "hybridlm.train"]
    small = [
        "--config.model.layer_pattern=('gdn','attn')",
        "--config.model.num_layers=2",
        "--config.data.seq_len=16",
        "--config.data.batch_size=2",
        "--config.data.heldout_fraction=0.2",
        "--config.optim.warmup_steps=0",
        *(f"--config.train.{key}=1" for key in ("num_steps", "log_every", "eval_every", "eval_batches")),
        "--config.train.checkpoint_every=1",
        f"--workdir={tmp_path / 'run'}",
    ]
    result = subprocess.run([sys.executable, *argv[1:], *small], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert (data["tokenizer"], data["eos_token"]) == (str(tmp_path.resolve() / "bpe"), EOT)


def _hf_token_files(root: pathlib.Path) -> pathlib.Path:
    """Token files in ``root``/tokens made with a BPE tokenizer of 300 ids (eos id 0) in ``root``/bpe."""
    tokenizer_path = train_bpe(root / "bpe")
    folder = root / "in"
    folder.mkdir()
    (folder / "a.txt").write_text(" ".join(TEXTS))
    prepare.prepare(
        prepare.directory_parts(str(folder), "text"),
        root / "tokens",
        tokenizer=str(tokenizer_path),
        eos_token=EOT,
        workers=1,
        source=str(folder),
    )
    return root / "tokens"


def _another_tokenizer(config, tokens):
    config.data.tokenizer = "byte"


def _model_vocab_below(config, tokens):
    config.model.vocab_size = 299


def _made_elsewhere(config, tokens):
    """The metadata names a tokenizer path of the machine that made the files, which this one lacks."""
    metadata = read_metadata(str(tokens))
    write_metadata(tokens, {**metadata, "tokenizer": "/elsewhere/tokenizer.json"})


def _byte_files_beside(config, tokens):
    write_raw(tokens.parent / "byte" / "part-00000.npy", np.array([5, 6, ByteTokenizer.eos_id], np.uint16))
    write_metadata(tokens.parent / "byte", {"dtype": "uint16", **prepare.tokenizer_metadata("byte", None)})
    config.data.paths = (*config.data.paths, str(tokens.parent / "byte" / "*.npy"))


METADATA_CASES = [
    (
        "config names another tokenizer",
        _another_tokenizer,
        "records the tokenizer '{tmp}/bpe/tokenizer.json' (eos id 0, 300 ids) but the run's tokenizer 'byte'",
    ),
    (
        "model vocab below the recorded tokenizer's",
        _model_vocab_below,
        "config.model.vocab_size=299 is below the 300 ids of the tokenizer '{tmp}/bpe/tokenizer.json' (the one the "
        "token files' {tmp}/tokens/metadata.json records)",
    ),
    (
        "recorded tokenizer absent here",
        _made_elsewhere,
        "no such file /elsewhere/tokenizer.json; give 'byte' or a Hugging Face tokenizer.json (or the directory holding "
        "it) (the token files' {tmp}/tokens/metadata.json records this tokenizer)",
    ),
    (
        "two directories record different tokenizers",
        _byte_files_beside,
        "but the token files' {tmp}/byte/metadata.json records 'byte' (eos id 256, 258 ids)",
    ),
]


@pytest.mark.parametrize("case, change, expected", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_tokenizer_from_metadata_is_checked(case, change, expected, tmp_path):
    """A run on token files takes their metadata's tokenizer, and validation refuses, in one line, one that the
    config or the files contradict."""
    tokens = _hf_token_files(tmp_path)
    config = data_config(source="token_files", paths=(str(tokens / "*.npy"),))
    config.model.vocab_size = 384
    config_checks.validate(config.copy_and_resolve_references())  # as made, the metadata's tokenizer is taken
    change(config, tokens)
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
    message = str(error.value)
    assert expected.format(tmp=tmp_path) in message and "\n" not in message, message
