"""tools/prepare_data.py: text/JSONL folders and tfds splits into token files and metadata.json."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from conftest import load_tool
from data_helpers import EOT, TEXTS, TFDS_NAME, build_tfds_dataset, data_config, train_bpe
from hybridlm.data import load_tokenizer
from hybridlm.data.pipeline import load_data


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
    assert "train on them with: --config.data.source=token_files" in capsys.readouterr().out

    tokenizer = load_tokenizer(str(tokenizer_path), EOT)
    expected = np.concatenate([np.append(ids, tokenizer.eos_id) for ids in tokenizer.encode_batch(documents)])
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert sorted(metadata["files"]) == ["part-00000.npy", "part-00001.npy", "part-00002.npy"]  # a.txt | jsonl | c.md
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / name, np.uint16) for name in sorted(metadata["files"])])
    np.testing.assert_array_equal(tokens, expected)
    assert metadata["dtype"] == "uint16" and metadata["eos_id"] == tokenizer.eos_id
    assert (metadata["num_tokens"], metadata["num_documents"]) == (expected.size, 7)
    assert metadata["files"]["part-00001.npy"]["num_documents"] == 5
    assert max(f["max_token_id"] for f in metadata["files"].values()) == expected.max()

    config = data_config(
        source="token_files",
        paths=(str(tmp_path / "out" / "*.npy"),),
        tokenizer=str(tokenizer_path),
        eos_token=EOT,
        seq_len=8,
        batch_size=2,
    )
    config.data.heldout_fraction = 0.2
    batch = load_data(config).train[0]
    assert batch["inputs"].shape == (2, 8)

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
