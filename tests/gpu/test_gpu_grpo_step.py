"""On a CUDA machine: one GRPO update with the production settings — Transformer Engine spec, bf16
with fp32 main params, Megatron's distributed optimizer (TE FusedAdam), NCCL — is finite, moves
the weights, and its loss equals ``rl.loss.policy_loss`` computed by hand from the same logprobs;
a train checkpoint saved and loaded restores the optimizer exactly (same next update). Run twice:
with the performance knobs off, and with those of examples/grpo_7b.yaml on (recompute, fused
kernels, gradient-accumulation fusion, grad-reduce and param-gather overlap)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dist_harness_gpu import run_single

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "grpo_7b.yaml"


def _worker(ckpt_dir: str, knobs: bool) -> dict[str, float]:
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.checkpoint.train_state import TrainCheckpointer
    from srpo_mcore.config import GRPOConfig, OptimConfig, ParallelConfig, load_config
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel, layout_from_config
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.batch import TrainSequence, collate, plan_micro_batches
    from srpo_mcore.rl.loss import policy_loss
    from srpo_mcore.rl.optim import build_optimizer, finish_param_sync, prepare_for_training
    from srpo_mcore.rl.policy_step import forward_logprobs, train_step
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint("gqa")
    init_parallel(ParallelDims(), backend="nccl")
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)

    recipe = load_config(RECIPE)
    layout = ModelLayout(dtype="bf16", transformer_impl="transformer_engine")
    ocfg = OptimConfig(lr=1e-4)
    if knobs:  # the recipe's model/optim performance fields, at this one-GPU layout
        layout = replace(layout_from_config(recipe.model, ParallelConfig()), freeze_vision=False)
        ocfg = replace(recipe.optim, lr=1e-4, warmup_steps=0)
        assert layout.recompute != "none" and layout.fused_kernels and ocfg.overlap_grad_reduce

    def build():
        model = Qwen25VLModel(arch, layout).cuda()
        load_hf_weights(model, path)
        ddp = prepare_for_training(model, ocfg)
        optimizer, _ = build_optimizer(ddp, ocfg, dtype="bf16", total_steps=4)
        return model, ddp, optimizer

    g = torch.Generator().manual_seed(0)
    seqs = [
        TrainSequence(
            tuple(torch.randint(5, 400, (16,), generator=g).tolist()),
            tuple(torch.randint(5, 400, (16,), generator=g).tolist()),
            float((-1) ** i),
            tuple((-6.0 + 0.3 * torch.randn(16, generator=g)).tolist()),
        )
        for i in range(4)
    ]

    def batches():
        plan = plan_micro_batches([len(s) for s in seqs], 64, pad_multiple=16)
        return [collate(seqs, part, pad_id=0, pad_multiple=16).to(torch.device("cuda")) for part in plan]

    model, ddp, optimizer = build()
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    mbs = batches()
    forward_logprobs([ddp], mbs, name="lp")
    m1 = train_step([ddp], optimizer, mbs, GRPOConfig(), old_logprobs="rollout")
    finish_param_sync(ddp)
    lp = torch.stack([mb.local["lp"][b][mb.loss_mask_BS[b] > 0] for mb in mbs for b in range(len(mb.index_B))])
    order = [i for mb in mbs for i in mb.index_B]
    old = torch.tensor([seqs[i].rollout_logprobs for i in order], device="cuda")
    adv = torch.tensor([seqs[i].advantage for i in order], device="cuda")
    expected, _ = policy_loss(lp, old, adv, torch.ones_like(lp))
    moved = max((p.detach().float() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before)
    TrainCheckpointer(ckpt_dir).save(1, model, optimizer, {"note": "gpu test"})
    m2 = train_step([ddp], optimizer, batches(), GRPOConfig(), old_logprobs="rollout")
    finish_param_sync(ddp)
    after_two = {n: p.detach().float().clone() for n, p in model.named_parameters() if n in before}

    model_b, ddp_b, optimizer_b = build()
    ckpt = TrainCheckpointer(ckpt_dir)
    ckpt.load(ckpt.latest(), model_b, optimizer_b)
    m2_b = train_step([ddp_b], optimizer_b, batches(), GRPOConfig(), old_logprobs="rollout")
    finish_param_sync(ddp_b)
    resumed = max(
        (p.detach().float() - after_two[n]).abs().max().item() for n, p in model_b.named_parameters() if n in after_two
    )
    destroy_parallel()
    return {
        "loss": m1["loss"],
        "expected": expected.item(),
        "grad_norm": m1["grad_norm"],
        "moved": moved,
        "second_loss": m2["loss"],
        "second_loss_resumed": m2_b["loss"],
        "resumed_weight_diff": resumed,
    }


@pytest.mark.parametrize("knobs", [False, True], ids=["knobs-off", "grpo_7b-knobs"])
def test_grpo_update_te_bf16_distributed_optimizer(tmp_path, knobs: bool) -> None:
    out = run_single(_worker, str(tmp_path / "ckpt"), knobs)
    assert abs(out["loss"] - out["expected"]) < 1e-3, out
    assert 0 < out["grad_norm"] < float("inf"), out
    assert out["moved"] > 0, out
    assert out["second_loss"] == out["second_loss_resumed"], out
    assert out["resumed_weight_diff"] == 0.0, out
