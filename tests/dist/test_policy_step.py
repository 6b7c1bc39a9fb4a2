"""The policy update's normalisation is the global batch's, however the batch is split.

One GRPO update (``rl.policy_step.train_step``: Megatron schedule, per-token loss, Megatron's
optimizer) of the tiny Qwen2.5-VL on fixed sequences with mixed-sign advantages and off-policy
rollout logprobs (ratios != 1, some clipped):

- the reported loss equals ``rl.loss.policy_loss`` computed by hand on the whole batch from the
  same logprobs (token mean and sequence mean);
- one micro-batch, many small micro-batches, and two data-parallel ranks (distributed optimizer over
  gloo, each rank half of the sequences) give the same updated weights (1e-6).
"""

from __future__ import annotations

import pytest
import torch

from dist_harness import run_distributed

NAME = "gqa"


def _sequences():
    from srpo_mcore.rl.batch import TrainSequence

    g = torch.Generator().manual_seed(0)
    seqs = []
    for i in range(7):
        p = torch.randint(5, 400, (6 + i,), generator=g).tolist()
        r = torch.randint(5, 400, (3 + (5 * i) % 11,), generator=g).tolist()
        rollout_lp = (-6.5 + 0.3 * torch.randn(len(r), generator=g)).tolist()
        seqs.append(TrainSequence(tuple(p), tuple(r), float((-1) ** i * (0.5 + 0.25 * i)), tuple(rollout_lp)))
    return seqs


def _worker(budget: int, aggregation: str) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.config import GRPOConfig, OptimConfig
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.batch import collate, plan_micro_batches, shard_for_dp
    from srpo_mcore.rl.loss import policy_loss
    from srpo_mcore.rl.optim import build_optimizer, prepare_for_training
    from srpo_mcore.rl.policy_step import forward_logprobs, train_step
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = Qwen25VLModel(Qwen25VLArch.from_hf(path), ModelLayout())
    load_hf_weights(model, path)
    ocfg = OptimConfig(lr=1e-4)  # Adam moves each weight by ~lr; summation-order noise stays ~1e-8
    ddp = prepare_for_training(model, ocfg)
    optimizer, _ = build_optimizer(ddp, ocfg, dtype="fp32", total_steps=1)
    seqs = _sequences()
    mine = shard_for_dp(seqs, ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    plan = plan_micro_batches([len(seqs[i]) for i in mine], budget)
    mbs = [collate(seqs, [mine[j] for j in part], pad_id=0, aggregation=aggregation) for part in plan]
    forward_logprobs([ddp], mbs, name="lp")
    # The hand computation needs every sequence: gather (index, logprobs) of the response tokens.
    local = []
    for mb in mbs:
        for b, i in enumerate(mb.index_B):
            mask = mb.loss_mask_BS[b] > 0
            local.append((i, mb.local["lp"][b][mask]))
    metrics = train_step([ddp], optimizer, mbs, GRPOConfig(aggregation=aggregation), old_logprobs="rollout")
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    by_index = dict(item for part in parts for item in part)
    T = max(len(s.response_ids) for s in seqs)
    lp, old, mask = torch.zeros(len(seqs), T), torch.zeros(len(seqs), T), torch.zeros(len(seqs), T)
    for i, s in enumerate(seqs):
        n = len(s.response_ids)
        lp[i, :n], old[i, :n], mask[i, :n] = by_index[i], torch.tensor(s.rollout_logprobs), 1.0
    adv = torch.tensor([s.advantage for s in seqs])
    expected, hand = policy_loss(lp, old, adv, mask, aggregation=aggregation)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    destroy_parallel()
    return {
        "loss": metrics["loss"],
        "expected": expected.item(),
        "clip_fraction": (metrics["clip_fraction"], hand["clip_fraction"]),
        "weights": weights,
        "micro_batches": len(mbs),
    }


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_split_invariant_update(tiny_checkpoint, aggregation: str) -> None:
    tiny_checkpoint(NAME)
    whole = run_distributed(_worker, 1, 10_000, aggregation)[0]
    split = run_distributed(_worker, 1, 40, aggregation)[0]
    dp2 = run_distributed(_worker, 2, 40, aggregation)
    assert whole["micro_batches"] == 1 and split["micro_batches"] >= 4
    assert abs(whole["loss"] - whole["expected"]) < 1e-6, (whole["loss"], whole["expected"])
    assert 0 < whole["clip_fraction"][0] < 1, "the test batch must have clipped and unclipped tokens"
    assert abs(whole["clip_fraction"][0] - whole["clip_fraction"][1]) < 1e-6
    for run in (split, *dp2):
        assert abs(run["loss"] - whole["expected"]) < 1e-6, (run["loss"], whole["expected"])
        for name, w in whole["weights"].items():
            err = (run["weights"][name] - w).abs().max().item()
            assert err < 1e-6, f"{name}: updated weights differ by {err:.2e}"
