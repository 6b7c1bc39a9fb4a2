"""Shared test setup: offline environment, tier markers by folder, GPU skipping, tiny fixtures.

Tiers are the folders: tests/unit, tests/dist, tests/e2e, tests/gpu. Each test gets its folder's
marker, so ``-m unit`` selects a tier. ``gpu`` tests are skipped when CUDA is unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub or a tracking server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = ("unit", "dist", "e2e", "gpu")
TESTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    for item in items:
        rel = Path(str(item.fspath)).relative_to(TESTS).parts
        tier = rel[0] if len(rel) > 1 and rel[0] in TIERS else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "gpu" and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)"))


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """Factory: ``tiny_checkpoint("gqa")`` -> HF directory of a tiny random Qwen2.5-VL (cached)."""
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    return build_tiny_checkpoint
