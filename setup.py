"""hybridlm: train hybrid attention + Gated DeltaNet language models in JAX."""

import setuptools

# tools/scaling_fit.py: the loss-law fit (threadpoolctl keeps BLAS to one thread in its tiny L-BFGS-B steps)
_SCALING = ["scipy>=1.11", "matplotlib>=3.8", "threadpoolctl>=3.1"]

setuptools.setup(
    name="hybridlm",
    version="0.1.0",
    description="JAX/Flax training framework for hybrid attention + Gated DeltaNet language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The experiment registry, the folder experiments/, installs as hybridlm_experiments: a name no other project uses.
    packages=[*setuptools.find_packages(include=["hybridlm", "hybridlm.*", "pallas_kernels", "pallas_kernels.*"]),
              "hybridlm_experiments"],
    package_dir={"hybridlm_experiments": "experiments"},
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "grain>=0.2.18",
        "array-record>=0.8",
        "tensorflow-datasets>=4.9.9",  # tfds.data_source only: reads ArrayRecord datasets without TensorFlow
        "tokenizers>=0.21",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=2.0",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", *_SCALING],
        "scaling": _SCALING,
        "hf": ["torch>=2.4", "transformers>=5.24,<6"],
        # hybridlm/lm_eval_model.py; [hf] brings accelerate for lm_eval's own hf backend (tests/test_lm_eval.py)
        "eval": ["lm_eval[hf]>=0.4.13,<0.5"],
    },
)
