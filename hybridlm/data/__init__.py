"""Built-in training data: byte tokenizer, stdlib-source corpus, grain LM batches."""

from hybridlm.data.batches import make_lm_dataset, num_windows
from hybridlm.data.builtin_corpus import CorpusSplits, load_builtin_corpus, unigram_entropy
from hybridlm.data.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "CorpusSplits",
    "load_builtin_corpus",
    "make_lm_dataset",
    "num_windows",
    "unigram_entropy",
]
