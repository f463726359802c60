"""Perplexity (hybridlm/perplexity.py) against numpy's log-softmax of the model's logits, its windows, and its command
line on text, JSONL and token files. One model, exported as a Hugging Face directory with the byte tokenizer; two
compiles: the scorer's [2, 32] batch and Model.logits' reference forward."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from absl.testing import flagsaver
from flax import nnx

from conftest import cli_flags, small_config
from hybridlm import api, perplexity
from hybridlm.data.tokenizer import ByteTokenizer
from hybridlm.hf.convert import SpecialTokens
from hybridlm.hf.export import export_params
from hybridlm.model import HybridLM, ModelConfig

SEQ_LEN = 32
TEXTS = ["def f(x):\n    return x", "é ü ß ∑", "a", "", "x = [i * i for i in range(9)]"]  # one empty: skipped
BYTE = ByteTokenizer()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny float32 hybrid (max_seq_len 32) with random weights, exported as a Hugging Face directory."""
    config = small_config()
    config.model.update(dtype="float32", max_seq_len=SEQ_LEN)
    model_config = ModelConfig.from_config(config.model)
    params = nnx.to_pure_dict(nnx.state(HybridLM(model_config, nnx.Rngs(3)), nnx.Param))
    out = tmp_path_factory.mktemp("ppl") / "hf"
    export_params(jax.device_get(params), model_config, out, dtype="float32", tokens=SpecialTokens(None, 256, 257))
    return out


@pytest.fixture(scope="module")
def model(hf_dir) -> api.Model:
    return api.load_model(hf_dir)


def _reference_nats(model: api.Model, documents: list[np.ndarray]) -> float:
    """The summed negative log-likelihood of each document after the eos id, from the full logits of one forward
    over all of them (right-padded to SEQ_LEN) and numpy's log-softmax in float64."""
    tokens = np.zeros((len(documents), SEQ_LEN), np.int32)
    for row, ids in enumerate(documents):
        tokens[row, : ids.size + 1] = [BYTE.eos_id, *ids]
    logits = np.asarray(model.logits(tokens), np.float64)
    top = logits.max(-1, keepdims=True)
    logprobs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return -sum(logprobs[row, np.arange(ids.size), ids].sum() for row, ids in enumerate(documents))


def test_matches_log_softmax_of_the_logits(model):
    """Documents that fit in one window, in batches of 2 (the last one padded): the same nats as the reference,
    tokens and bytes counted, and bits per byte = nats / ln 2 / bytes."""
    result = perplexity.evaluate_perplexity(
        model, perplexity.text_documents(TEXTS, BYTE), SEQ_LEN, 2, eos_id=BYTE.eos_id
    )
    documents = [BYTE.encode(text) for text in TEXTS if text]
    nats = _reference_nats(model, documents)
    num_bytes = sum(len(text.encode("utf-8")) for text in TEXTS)
    assert (result.tokens, result.bytes, result.documents) == (sum(d.size for d in documents), num_bytes, 4)
    assert result.nats == pytest.approx(nats, rel=1e-5)
    assert result.loss == pytest.approx(nats / result.tokens, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nats / result.tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nats / np.log(2) / num_bytes, rel=1e-5)


@pytest.mark.parametrize("size, stride", [(70, 32), (70, 8), (32, 32), (33, 5), (1, 1)])
def test_windows_score_every_token_once(size, stride):
    """Windows of at most SEQ_LEN inputs whose targets are the inputs shifted by one score each of the document's
    tokens once, from the second window on with at least SEQ_LEN - stride tokens of context."""
    sequence = np.arange(size + 1)  # the eos stand-in, then the document; values are positions
    scored = []
    for index, (inputs, targets, first) in enumerate(perplexity.windows(sequence, SEQ_LEN, stride)):
        assert inputs.size == targets.size <= SEQ_LEN and np.array_equal(targets, inputs + 1)
        assert index == 0 and first == 0 or first >= SEQ_LEN - stride
        scored.extend(targets[first:].tolist())
    assert scored == list(range(1, size + 1))


def _run_cli(capsys, **flag_values) -> list[str]:
    with cli_flags(perplexity.define_flags), flagsaver.flagsaver(**flag_values):
        perplexity.main([])
    return capsys.readouterr().out.split()


def test_command_line_reads_text_jsonl_and_token_files(model, hf_dir, tmp_path, capsys):
    """The same documents as text files, JSONL and a token file (eos-separated, as prepare_data writes them) give the
    API's numbers; a long document is scored in windows (stride 8) and counted whole."""
    texts = [t for t in TEXTS if t] + ["long " * 20]
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    ids = [np.append(BYTE.encode(t), BYTE.eos_id) for t in texts]
    np.save(tmp_path / "docs.npy", np.concatenate(ids).astype(np.uint16))
    expected = perplexity.evaluate_perplexity(
        model, perplexity.text_documents(texts, BYTE), SEQ_LEN, 2, eos_id=BYTE.eos_id, stride=8
    )
    common = dict(model=str(hf_dir), tokenizer="byte", batch_size=2, stride=8)
    outputs = [
        _run_cli(capsys, data=[str(tmp_path / "doc*.txt")], **common),
        _run_cli(capsys, data=[str(tmp_path / "docs.jsonl")], text_field="body", **common),
        _run_cli(capsys, data=[str(tmp_path / "docs.npy")], **common),
    ]
    for out in outputs:
        assert float(out[1]) == pytest.approx(expected.loss, abs=1e-4)
        assert float(out[6]) == pytest.approx(expected.bits_per_byte, abs=1e-4)
        assert out[7:12] == [f"({len(texts)}", "documents,", str(expected.tokens), "tokens,", str(expected.bytes)]


def test_bad_stride(model):
    with pytest.raises(ValueError, match=r"stride=40 must be in \[1, seq_len=32\]"):
        perplexity.evaluate_perplexity(model, [], SEQ_LEN, 2, eos_id=BYTE.eos_id, stride=40)
