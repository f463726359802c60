"""An lm-evaluation-harness backend, registered as the model `hybridlm`: any workdir or Hugging Face directory that
`hybridlm.load_model` reads, scored with our own forward and generated with `hybridlm.generate`.

lm_eval (0.4.x) finds models only in its own registry (no entry points), so importing this module registers the class.
The command line registers it, then runs lm_eval's own command line with the same arguments:

  python -m hybridlm.lm_eval_model --model hybridlm --model_args path=DIR[,max_length=2048] --batch_size 8 \\
      --tasks hellaswag

From Python: `import hybridlm.lm_eval_model` and then `lm_eval.simple_evaluate(model="hybridlm", ...)`.

Text is encoded with the run's tokenizer (or the Hugging Face directory's tokenizer.json) without special tokens; an
empty context is the eos id, the separator the model saw before each training document. Like lm_eval's `hf` backend,
a context and continuation longer than `max_length` keep their last `max_length + 1` tokens, and rolling
log-likelihoods use lm_eval's windows (each token scored once, the last window with a full context).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  registers lm_eval's own models before ours (get_model skips that when non-empty)
import numpy as np
import tqdm
from lm_eval import utils as lm_eval_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from hybridlm import generate
from hybridlm.api import load_model
from hybridlm.perplexity import Scorer, model_tokenizer
from hybridlm.sampling import Sampling

_MIN_ROW_TOKENS = 16  # rows are padded to a power of two at least this long, so compiles stay few


@register_model("hybridlm")
class HybridLMEval(TemplateLM):
    """lm_eval's `LM` over a hybridlm model.

    Arguments (`--model_args`): path (workdir or Hugging Face directory), step (workdir checkpoint; default the
    latest), dtype (compute dtype), tokenizer (default the run's), max_length (tokens per row; default
    config.model.max_seq_len), max_gen_toks (default 256), seed (sampling). batch_size (rows per forward) comes from
    lm_eval's --batch_size; its device and max_batch_size are accepted and ignored.
    """

    def __init__(
        self,
        path: str,
        step: int | None = None,
        dtype: str | None = None,
        tokenizer: str | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        device: str | None = None,
        max_batch_size: int | None = None,
    ):
        del device, max_batch_size  # lm_eval passes them to every model; JAX picks the device
        super().__init__()
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a whole number >= 1 (hybridlm has no 'auto')")
        self.model = load_model(path, step=None if step is None else int(step), dtype=dtype)
        self.hybridlm_tokenizer = model_tokenizer(self.model, path, tokenizer)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or self.model.config.max_seq_len)
        self.model.config.check_seq_len(self.max_length)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        self._scorer = Scorer(self.model)

    @property
    def eot_token_id(self) -> int:
        return self.hybridlm_tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        """The ids of `string`, never with special tokens (the runs train without them)."""
        del add_special_tokens, kwargs
        return self.hybridlm_tokenizer.encode_batch([string])[0].tolist()

    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[object, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: object
    ) -> list[tuple[float, bool]]:
        """Each (key, context ids, continuation ids) -> (log-probability of the continuation after the context,
        whether greedy decoding gives it). Rows of `batch_size`, longest first."""
        del kwargs
        rows = []
        for _, context, continuation in requests:
            if not 0 < len(continuation) <= self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens; each needs 1..{self.max_length}")
            whole = (context + continuation)[-(self.max_length + 1) :]
            rows.append((np.asarray(whole[:-1], np.int32), np.asarray(whole[1:], np.int32), len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -rows[i][0].size)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in tqdm.trange(0, len(order), self.batch_size, disable=disable_tqdm, desc="hybridlm loglikelihood"):
            batch = order[start : start + self.batch_size]
            width = self._row_width(rows[batch[0]][0].size)
            tokens = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            for row, i in enumerate(batch):
                tokens[row, : rows[i][0].size], targets[row, : rows[i][1].size] = rows[i][0], rows[i][1]
            logprobs, greedy = self._scorer(tokens, targets)
            for row, i in enumerate(batch):
                size, scored = rows[i][0].size, rows[i][2]
                part = slice(size - scored, size)
                results[i] = (float(np.sum(logprobs[row, part], dtype=np.float64)), bool(greedy[row, part].all()))
        return results

    def _row_width(self, longest: int) -> int:
        """The padded length of a batch whose longest row has `longest` tokens: the next power of two (at least
        _MIN_ROW_TOKENS), capped at max_length."""
        return min(self.max_length, max(_MIN_ROW_TOKENS, 1 << (longest - 1).bit_length()))

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text after the eos id, in lm_eval's rolling windows of max_length."""
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            pieces = lm_eval_utils.get_rolling_token_windows(
                self.tok_encode(text), self.eot_token_id, self.max_length, context_len=1
            )
            for context, continuation in map(lm_eval_utils.make_disjoint_window, pieces):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Each (context, gen_kwargs) -> the text generated after the context, cut before the first of
        gen_kwargs["until"] (the eos token also stops it). Greedy unless do_sample with a temperature. Requests with
        the same gen_kwargs go in batches of batch_size."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(request.args[1]), []).append(i)
        outputs = [""] * len(requests)
        with tqdm.tqdm(total=len(requests), disable=disable_tqdm, desc="hybridlm generate") as progress:
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start : start + self.batch_size]
                    texts = self._generate([requests[i].args[0] for i in batch], requests[batch[0]].args[1])
                    for i, text in zip(batch, texts):
                        outputs[i] = text
                    progress.update(len(batch))
        return outputs

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        """The continuations of `contexts`, each cut before the first stop string of gen_kwargs["until"]."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", [])
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks)))
        max_new = min(max_new, self.max_length - 1)
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        room = self.max_length - max_new
        prompts = [(self.tok_encode(context) or [self.eot_token_id])[-room:] for context in contexts]
        ids = generate.generate(
            self.model.module(), prompts, max_new, Sampling(temperature), self.seed, [self.eot_token_id]
        )
        texts = [self.hybridlm_tokenizer.decode([t for t in row if t != self.eot_token_id]) for row in ids]
        return [cut_at_stop(text, until) for text in texts]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any string of `until` (all of it when none occurs)."""
    return text[: min((i for i in (text.find(stop) for stop in until if stop) if i >= 0), default=len(text))]


def main() -> None:
    """lm_eval's command line (`lm_eval ...` with the same arguments), with the `hybridlm` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
