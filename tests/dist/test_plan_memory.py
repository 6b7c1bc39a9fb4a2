"""The planner's activation and optimizer bytes against what the tiny model really holds on CPU.

One process, fp32, local spec (SDPA attention): the bytes one decoder layer saves for backward
(every tensor autograd keeps, counted once per storage) for 512 tokens, without recompute and
with selective (core attention + MLP) and full recompute, and the bytes of Megatron's distributed
optimizer state after a step, against ``srpo_mcore.plan``'s formulas: within ACTIVATION_MARGIN
(the formula leaves out small tensors: RoPE tables, norm statistics, masks) and exactly for the
optimizer (fp32: Adam's two moments per trainable parameter, no master copy).
"""

from __future__ import annotations

import pytest

from dist_harness import run_distributed

ACTIVATION_MARGIN = 0.10
TOKENS = 512


def _worker() -> dict:
    import torch
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.config import OptimConfig
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.optim import build_optimizer, prepare_for_training
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint("gqa")
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    saved: dict[str, int] = {}
    layouts = {
        "none": {},
        "selective": dict(recompute="selective", recompute_modules=("core_attn", "mlp")),
        "full": dict(recompute="full", recompute_method="uniform", recompute_num_layers=1),
    }
    for name, extra in layouts.items():
        model = Qwen25VLModel(arch, ModelLayout(freeze_vision=True, **extra))
        block = model.language_model.decoder
        x = torch.randn(TOKENS, 1, arch.text.hidden_size, requires_grad=True)
        pos = torch.arange(TOKENS).view(1, 1, TOKENS).expand(3, 1, TOKENS)
        rope = model.language_model.rotary_pos_emb(pos, mrope_section=list(arch.text.mrope_section))
        storages: dict[int, int] = {}
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            if key not in params and key != x.untyped_storage().data_ptr():
                storages[key] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = block(hidden_states=x, attention_mask=None, rotary_pos_emb=rope)
        out.sum().backward()
        saved[name] = sum(storages.values()) / arch.text.num_layers  # per layer
    model = Qwen25VLModel(arch, ModelLayout(freeze_vision=True))
    load_hf_weights(model, path)
    ddp = prepare_for_training(model, OptimConfig())
    optimizer, _ = build_optimizer(ddp, OptimConfig(), dtype="fp32", total_steps=2)
    for p in model.parameters():
        if p.requires_grad:
            p.main_grad.normal_()
    optimizer.step()
    state = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group_state in opt.optimizer.state.values():
            state += sum(v.numel() * v.element_size() for v in group_state.values() if torch.is_tensor(v) and v.ndim)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    destroy_parallel()
    return {"saved": saved, "optimizer_bytes": state, "trainable": trainable}


def test_planner_matches_what_the_tiny_model_holds() -> None:
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.plan import layer_activation_bytes_per_token
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    out = run_distributed(_worker, 1)[0]
    t = Qwen25VLArch.from_hf(build_tiny_checkpoint("gqa")).text
    for name, measured in out["saved"].items():
        planned = TOKENS * layer_activation_bytes_per_token(
            t, tp=1, sp=False, dtype_bytes=4, recompute=name, modules=("core_attn", "mlp")
        )
        assert planned == pytest.approx(measured, rel=ACTIVATION_MARGIN), f"{name}: planned {planned} vs {measured}"
    assert out["saved"]["full"] < out["saved"]["selective"] < out["saved"]["none"]
    assert out["optimizer_bytes"] == 8 * out["trainable"], out
