"""The hybrid language model (attention + Gated DeltaNet) in Flax NNX."""

from hybridlm.model.config import ConfigError, GDNConfig, ModelConfig
from hybridlm.model.lm import HybridLM, abstract_model, abstract_params, count_params

__all__ = ["ConfigError", "GDNConfig", "HybridLM", "ModelConfig", "abstract_model", "abstract_params", "count_params"]
