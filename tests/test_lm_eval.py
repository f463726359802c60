"""The lm-evaluation-harness backend (hybridlm/lm_eval_model.py) against lm_eval's own `hf` backend on one exported
tiny hybrid with a small byte-level BPE tokenizer: a local multiple-choice task's log-likelihoods, a rolling
log-likelihood, and generation with stop strings. Skipped without lm_eval (the eval extra)."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

lm_eval = pytest.importorskip("lm_eval", reason="lm_eval is not installed: pip install -e '.[eval]'")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from conftest import small_config  # noqa: E402
from hybridlm import lm_eval_model  # noqa: E402
from hybridlm.hf.convert import SpecialTokens  # noqa: E402
from hybridlm.hf.export import export_params  # noqa: E402
from hybridlm.model import HybridLM, ModelConfig  # noqa: E402

EOS = "<|endoftext|>"
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "two plus two is four", "the sky is blue"]
TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""
QUESTIONS = [
    ("where did the cat sit?", [" on the mat", " in the park", " blue"], 0),
    ("what is two plus two?", [" four", " the sky", " a dog ran"], 0),
    ("what colour is the sky?", [" blue", " the mat is", " two"], 0),
]
MAX_REL_ERR = 1e-4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny float32 hybrid with random weights and a 300-id byte-level BPE tokenizer, as a Hugging Face directory."""
    root = tmp_path_factory.mktemp("lm_eval")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS)
    config = small_config()
    config.model.update(dtype="float32", max_seq_len=64, vocab_size=len(tokenizer))
    model_config = ModelConfig.from_config(config.model)
    params = jax.device_get(nnx.to_pure_dict(nnx.state(HybridLM(model_config, nnx.Rngs(5)), nnx.Param)))
    tokens = SpecialTokens(bos=None, eos=tokenizer.eos_token_id, pad=tokenizer.eos_token_id)
    export_params(params, model_config, root / "hf", dtype="float32", tokens=tokens)
    tokenizer.save_pretrained(root / "hf")
    return root / "hf"


@pytest.fixture(scope="module")
def models(hf_dir) -> tuple[lm_eval_model.HybridLMEval, object]:
    """Our backend, looked up by its registered name, and lm_eval's `hf` backend on the same directory."""
    ours = get_model("hybridlm").create_from_arg_string(f"path={hf_dir},batch_size=4")
    theirs = get_model("hf")(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=4)
    return ours, theirs


def _task_manager(tmp_path: pathlib.Path) -> TaskManager:
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(f'{{"question": "{q}", "choices": {c!r}, "answer": {a}}}\n' for q, c, a in QUESTIONS)
                    .replace("'", '"'))
    (tmp_path / "tiny_mc.yaml").write_text(TASK.format(data=data))
    return TaskManager(include_path=str(tmp_path), include_defaults=False)  # indexing lm_eval's own tasks is slow


def test_multiple_choice_loglikelihoods_match_hf_backend(models, tmp_path):
    """The task's requests (3 questions x 3 choices, built by lm_eval from the YAML) score the same in both."""
    ours, theirs = models
    task = _task_manager(tmp_path).load("tiny_mc")["tasks"]["tiny_mc"]
    task.build_all_requests()
    requests = task.instances
    assert len(requests) == 3 * len(QUESTIONS)
    got = np.array([logprob for logprob, _ in ours.loglikelihood(requests)])
    expected = np.array([logprob for logprob, _ in theirs.loglikelihood(requests)])
    assert np.abs(got - expected).max() / np.abs(expected).max() <= MAX_REL_ERR


def test_rolling_loglikelihood_matches_hf_backend(models):
    ours, theirs = models
    requests = [Instance("loglikelihood_rolling", {}, (text,), 0) for text in ("the cat sat on the mat", "a")]
    got, expected = ours.loglikelihood_rolling(requests), theirs.loglikelihood_rolling(requests)
    np.testing.assert_allclose(got, expected, rtol=MAX_REL_ERR)


def test_generate_until_cuts_at_the_first_stop_string(models):
    ours, _ = models
    prompts = ["the cat", "two plus"]
    full = ours.model.generate([ours.tok_encode(p) for p in prompts], 8, stop_tokens=[ours.eot_token_id])
    texts = [ours.hybridlm_tokenizer.decode([t for t in row if t != ours.eot_token_id]) for row in full]
    until = [texts[0][2:4], "never"]  # a stop string inside the first text, and one that occurs in neither
    assert until[0] and until[0] not in texts[1]
    requests = [Instance("generate_until", {}, (p, {"until": until, "max_gen_toks": 8}), 0) for p in prompts]
    assert ours.generate_until(requests) == [texts[0][: texts[0].index(until[0])], texts[1]]
    assert lm_eval_model.cut_at_stop("abcXdefYX", ["Y", "X"]) == "abc"


def test_command_line_gives_the_task_metrics_of_the_hf_backend(models, hf_dir, tmp_path):
    """`python -m hybridlm.lm_eval_model` (lm_eval's own command line, our model registered) on the local task: its
    metrics and every logged log-likelihood equal lm_eval's with the `hf` backend on the exported checkpoint."""
    import json
    import subprocess
    import sys

    _, theirs = models
    manager = _task_manager(tmp_path)
    expected = lm_eval.simple_evaluate(model=theirs, tasks=["tiny_mc"], task_manager=manager, log_samples=True)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hybridlm.lm_eval_model", "--model", "hybridlm", "--model_args", f"path={hf_dir}",
               "--batch_size", "4", "--tasks", "tiny_mc", "--include_path", str(tmp_path), "--output_path", str(out),
               "--log_samples"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = out.rglob("results_*.json")
    got = json.loads(written.read_text())["results"]["tiny_mc"]
    for metric in ("acc,none", "acc_stderr,none"):
        assert got[metric] == pytest.approx(expected["results"]["tiny_mc"][metric], rel=1e-6), metric
    (samples,) = out.rglob("samples_tiny_mc_*.jsonl")
    logged = {json.loads(line)["doc_id"]: json.loads(line)["resps"] for line in samples.read_text().splitlines()}
    reference = {sample["doc_id"]: sample["resps"] for sample in expected["samples"]["tiny_mc"]}
    ours = np.array([float(r[0][0]) for doc in sorted(reference) for r in logged[doc]])
    hf = np.array([float(r[0][0]) for doc in sorted(reference) for r in reference[doc]])
    assert ours.size == 3 * len(QUESTIONS) and np.abs(ours - hf).max() / np.abs(hf).max() <= MAX_REL_ERR
