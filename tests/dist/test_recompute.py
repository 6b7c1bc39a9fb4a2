"""Activation recomputation (``model.recompute``) computes exactly what the model computes without it.

One process, the tiny model with an image, fp32 on CPU: logits and every gradient of selective
(core attention; core attention + MLP) and full (uniform, block) recomputation are bitwise
equal to the run without recomputation — recomputation changes what is stored, not the numbers.
"""

from __future__ import annotations

import torch

from dist_harness import run_distributed

LAYOUTS = {
    "selective core_attn": dict(recompute="selective", recompute_modules=("core_attn",)),
    "selective core_attn+mlp": dict(recompute="selective", recompute_modules=("core_attn", "mlp")),
    "full uniform 1": dict(recompute="full", recompute_method="uniform", recompute_num_layers=1),
    "full block 1": dict(recompute="full", recompute_method="block", recompute_num_layers=1),
}
RUNS = {  # forward runs of (layer 0, layer 1)'s core attention and MLP: 2 = recomputed in backward
    "none": {"core_attention": (1, 1), "mlp": (1, 1)},
    "selective core_attn": {"core_attention": (2, 2), "mlp": (1, 1)},
    "selective core_attn+mlp": {"core_attention": (2, 2), "mlp": (2, 2)},
    "full uniform 1": {"core_attention": (2, 2), "mlp": (2, 2)},
    "full block 1": {"core_attention": (2, 1), "mlp": (2, 1)},
}


def _worker() -> dict:
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint
    from qwen_cases import build_cases

    path = build_tiny_checkpoint("gqa")
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    inp = build_cases(path)["one_image"]
    out = {}
    for name, extra in {"none": {}, **LAYOUTS}.items():
        model = Qwen25VLModel(arch, ModelLayout(freeze_vision=False, **extra))
        load_hf_weights(model, path)
        if name != "none":
            assert model.language_model.config.recompute_granularity == extra["recompute"], name
        runs: dict[str, list[int]] = {"core_attention": [0, 0], "mlp": [0, 0]}
        for i, layer in enumerate(model.language_model.decoder.layers):
            for part, module in (("core_attention", layer.self_attention.core_attention), ("mlp", layer.mlp)):
                module.register_forward_hook(lambda *_, part=part, i=i: runs[part].__setitem__(i, runs[part][i] + 1))
        logits = model(inp["input_ids"], pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
        (logits.float().logsumexp(-1).sum() + logits[..., 7].sum()).backward()
        out[name] = {"logits": logits.detach(), **{n: p.grad.clone() for n, p in model.named_parameters()}}
        out[name]["runs"] = {k: tuple(v) for k, v in runs.items()}
    destroy_parallel()
    return out


def test_recompute_is_exact() -> None:
    out = run_distributed(_worker, 1)[0]
    for name, runs in RUNS.items():
        got = out[name].pop("runs")
        assert got == runs, f"{name}: forward runs {got} are not this recomputation's {runs}"
    base = out.pop("none")
    assert len(base) > 40  # logits + every parameter (vision tower included)
    for name, got in out.items():
        assert sorted(got) == sorted(base), name
        for key, value in base.items():
            assert torch.equal(got[key], value), f"{name}: {key} differs by {(got[key] - value).abs().max():.3g}"
