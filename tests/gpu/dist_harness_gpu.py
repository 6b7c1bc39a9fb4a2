"""Run a function in one fresh torchrun-style process (Megatron's global state stays out of pytest).

Reuses tests/dist's harness and input builders.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dist"))

from dist_harness import run_distributed


def run_single(fn: Callable[..., Any], *args: Any) -> Any:
    return run_distributed(fn, 1, *args)[0]


def tiny_policy_on_gpu() -> tuple[Path, Any, Any]:
    """In a worker: the parallel state (NCCL, TP 1) and the tiny gqa policy on the GPU in bf16,
    loaded from its HF checkpoint. Returns (HF dir, arch, model)."""
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint("gqa")
    init_parallel(ParallelDims(), backend="nccl")
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    model = Qwen25VLModel(arch, ModelLayout(dtype="bf16")).cuda()
    load_hf_weights(model, path)
    return path, arch, model
