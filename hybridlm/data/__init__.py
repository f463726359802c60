"""Training data: sources (built-in corpus, token files, documents, tfds), tokenizers, grain LM batches."""

from hybridlm.data.batches import make_lm_dataset, num_windows
from hybridlm.data.builtin_corpus import CorpusSplits, load_builtin_corpus, unigram_entropy
from hybridlm.data.stream import TokenStream
from hybridlm.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "CorpusSplits",
    "HFTokenizer",
    "TokenStream",
    "load_builtin_corpus",
    "load_tokenizer",
    "make_lm_dataset",
    "num_windows",
    "unigram_entropy",
]
