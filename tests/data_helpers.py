"""Helpers the data tests share: token files, a BPE tokenizer trained on the spot, and run configs that read them."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds
import tokenizers
from ml_collections import config_dict

from conftest import small_config

EOT = "<|endoftext|>"
TFDS_NAME = "hybridlm_test_docs"
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "to be or not to be, that is the question",
    "all that glitters is not gold; all who wander are not lost",
] * 8


def write_raw(path: pathlib.Path, tokens: np.ndarray) -> pathlib.Path:
    """A headerless token file, as Olmo's corpora are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens).tofile(path)
    return path


def train_bpe(directory: pathlib.Path, vocab_size: int = 300, with_config: bool = False) -> pathlib.Path:
    """Trains a byte-level BPE tokenizer on ``TEXTS`` and saves it as ``directory/tokenizer.json`` (and a
    ``tokenizer_config.json`` naming its eos token when ``with_config``)."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    if with_config:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOT}))
    return directory / "tokenizer.json"


def data_config(**data: object) -> config_dict.ConfigDict:
    """The small test run (conftest.small_config) with `config.data` fields overridden."""
    config = small_config()
    config.data.update(data)
    return config


class HybridlmTestDocs(tfds.core.GeneratorBasedBuilder):
    """A tiny text dataset (``TEXTS`` four times, in the feature "body"), built locally as ArrayRecord files."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(TEXTS * 4):
            yield i, {"body": text}


def build_tfds_dataset(data_dir: pathlib.Path) -> None:
    """Writes ``TFDS_NAME`` under ``data_dir`` (nothing is downloaded)."""
    HybridlmTestDocs(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
