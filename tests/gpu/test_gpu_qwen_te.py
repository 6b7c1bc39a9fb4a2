"""On a CUDA machine: Qwen2.5-VL with the Transformer Engine spec (bf16 and FP8) against the local
spec on the same weights — forward and backward, vision tower included (packed THD attention)."""

from __future__ import annotations

import pytest
import torch
from dist_harness_gpu import run_single

RECIPES = ["tensorwise", "delayed"]


def _worker(fp8_recipe: str) -> dict[str, float]:
    from megatron.core import tensor_parallel
    from qwen_cases import build_cases

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint("gqa")
    init_parallel(ParallelDims(), backend="nccl")
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    inp = build_cases(path)["one_image"]
    ids = inp["input_ids"]
    pad = (-ids.shape[1]) % 16  # FP8 GEMMs want token counts divisible by 16
    ids = torch.cat([ids, ids[:, -1:].expand(1, pad)], dim=1).cuda()
    kwargs = dict(pixel_values=inp["pixel_values"].cuda(), image_grid_thw=inp["image_grid_thw"].cuda())
    out = {}
    layouts = {
        "local": ModelLayout(dtype="bf16"),
        "te": ModelLayout(dtype="bf16", transformer_impl="transformer_engine"),
        "te_fp8": ModelLayout(dtype="bf16", transformer_impl="transformer_engine", fp8="hybrid", fp8_recipe=fp8_recipe),
    }
    logp = {}
    for name, layout in layouts.items():
        model = Qwen25VLModel(arch, layout).cuda()
        load_hf_weights(model, path)
        logits = model(ids, **kwargs)
        logits.float().logsumexp(-1).mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: missing or non-finite grads"
        logp[name] = torch.log_softmax(logits.float(), -1).detach()
        if name != "local":
            from transformer_engine.pytorch import LayerNormLinear

            assert any(isinstance(m, LayerNormLinear) for m in model.modules()), "TE layers are in use"
    out["te_vs_local"] = (logp["te"] - logp["local"]).abs().max().item()
    out["fp8_vs_bf16_mean"] = (logp["te_fp8"] - logp["te"]).abs().mean().item()
    destroy_parallel()
    return out


@pytest.mark.parametrize("recipe", RECIPES)
def test_te_spec_bf16_and_fp8_against_local(recipe: str) -> None:
    out = run_single(_worker, recipe)
    assert out["te_vs_local"] < 5e-2, out
    assert out["fp8_vs_bf16_mean"] < 5e-2, out
