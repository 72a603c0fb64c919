"""grpo_jax: which KL does GRPO really optimise, and when does that choice matter?"""

from setuptools import find_packages, setup

setup(
    name="grpo_jax",
    version="0.1.0",
    description="A JAX research framework for GRPO and its KL penalty.",
    python_requires=">=3.11",
    packages=find_packages(include=["grpo_jax", "grpo_jax.*"]),
    # Upper bounds: below the next minor version of the newest release known to work (README.md,
    # "Tested versions"): the suite passes on jax/jaxlib 0.10.2, flax 0.12.8, optax 0.2.8,
    # orbax-checkpoint 0.12.8; jax/jaxlib 0.11.2 (with flax 0.12.10) ran the benchmarks on the
    # GPU image (benchmarks/README.md), so jax and jaxlib stop below 0.12, not 0.11.
    install_requires=[
        "jax>=0.4.35,<0.12",
        "jaxlib>=0.4.35,<0.12",
        "flax>=0.10.0,<0.13",
        "optax>=0.2.3,<0.3",
        "chex>=0.1.87",
        "absl-py>=2.1.0",
        "ml-collections>=0.1.1",
        "orbax-checkpoint>=0.6.4,<0.13",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "scipy>=1.11",  # the study's statistics and the Gaussian class's optima
        "tensorboardX>=2.6",
        "tqdm>=4.66",
    ],
    extras_require={
        # gguf, tokenizers, jinja2: tests/test_gguf.py (GGUF loader, tokenizer, chat
        # template) and the real-model experiments (experiments/lm_greedy.py,
        # experiments/token_modality.py). safetensors: the Hugging Face checkpoint loader
        # (grpo_jax/models/hf_llama.py) and tests/test_safetensors.py.
        # black: the one formatter, checked in CI (pinned so the check is reproducible).
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "gguf>=0.10",
            "tokenizers>=0.19",
            "jinja2>=3.1",
            "safetensors>=0.8",  # NumPy bfloat16 (ml_dtypes) as tested
            "black==26.10.1",
        ],
        # benchmarks/vs_trl.py only (never needed by the tests). torch 2.13.0 is the CPU
        # wheel the CI machines carry; install it first so pip does not fetch a CUDA build.
        # gguf and jinja2: W3 loads SmolLM2's GGUF file on both sides (transformers'
        # `from_pretrained(..., gguf_file=...)` needs gguf >= 0.10; 0.19.0 tested) and renders
        # its chat template.
        "bench": [
            "torch>=2.13.0,<2.14",
            "trl>=1.16,<2",
            "transformers>=5.0",
            "datasets>=5.0",
            "accelerate>=1.10",
            "gguf>=0.10",
            "jinja2>=3.1",
        ],
    },
)
