"""hybridlm: train hybrid attention + Gated DeltaNet language models in JAX.

`hybridlm.load_model(path)` loads a trained model from a workdir or a Hugging Face directory.
"""


def __getattr__(name: str):
    if name == "load_model":  # Imported on first use, so `python -m hybridlm.train` starts fast.
        from hybridlm.api import load_model

        return load_model
    raise AttributeError(f"module 'hybridlm' has no attribute {name!r}")
