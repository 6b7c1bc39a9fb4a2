"""The policy update's normalisation is the global batch's, however the batch is split.

One GRPO update (``rl.policy_step.train_step``: Megatron schedule, per-token loss, Megatron's
optimizer) of the tiny Qwen2.5-VL on fixed sequences with mixed-sign advantages and off-policy
rollout logprobs (ratios != 1, some clipped):

- the reported loss equals ``rl.loss.policy_loss`` computed by hand on the whole batch from the
  same logprobs (token mean and sequence mean);
- one micro-batch, many small micro-batches, and two data-parallel ranks (distributed optimizer over
  gloo, each rank half of the sequences) give the same updated weights (1e-6);
- with rollout correction on (``tis``, ``seq_tis``, ``mask``: ratios of the trainer's recomputed
  behaviour logprobs over the rollout's, many truncated or masked), the loss equals
  ``policy_loss`` with the hand-side weights of ``rl.rollout_correction`` on the whole batch, and
  micro-batch, data-parallel and context-parallel (CP=2, a sequence's ratio reduced over both
  halves) splits give the same updated weights.
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
        rollout_lp = (-7.0 + 0.3 * torch.randn(len(r), generator=g)).tolist()
        seqs.append(TrainSequence(tuple(p), tuple(r), float((-1) ** i * (0.5 + 0.25 * i)), tuple(rollout_lp)))
    return seqs


def _worker(budget: int, aggregation: str, correction: str = "none", cap: float = 2.0, cp: int = 1) -> dict:
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
    from srpo_mcore.rl.policy_step import cp_local, forward_logprobs, set_rollout_correction, train_step
    from srpo_mcore.rl.rollout_correction import correction_weights, sequence_log_ratio, sequence_sums
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims(cp=cp))
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = Qwen25VLModel(Qwen25VLArch.from_hf(path), ModelLayout(cp=cp))
    load_hf_weights(model, path)
    ocfg = OptimConfig(lr=1e-4)  # Adam moves each weight by ~lr; summation-order noise stays ~1e-8
    ddp = prepare_for_training(model, ocfg)
    optimizer, _ = build_optimizer(ddp, ocfg, dtype="fp32", total_steps=1)
    seqs = _sequences()
    mine = shard_for_dp(seqs, ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    pad = 2 * cp if cp > 1 else 1
    plan = plan_micro_batches([len(seqs[i]) for i in mine], budget, pad)
    mbs = [
        collate(seqs, [mine[j] for j in part], pad_id=0, pad_multiple=pad, aggregation=aggregation) for part in plan
    ]
    gap = forward_logprobs([ddp], mbs, name="lp", mismatch=True)
    cfg = GRPOConfig(aggregation=aggregation, rollout_correction=correction, correction_cap=cap)
    fraction = set_rollout_correction(mbs, cfg, old_logprobs="lp")["correction_fraction"]
    if correction == "none":
        metrics = train_step([ddp], optimizer, mbs, cfg, old_logprobs="rollout")
    else:  # the trainer's behaviour logprobs are the old policy; the rollout's only weight the tokens
        metrics = train_step([ddp], optimizer, mbs, cfg, old_logprobs="lp")
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if cp > 1:  # logprobs are context-parallel slices here; the hand computation is the CP=1 run's
        assert all(cp_local(mb.loss_mask_BS).shape == mb.local["lp"].shape for mb in mbs)
        destroy_parallel()
        return {"loss": metrics["loss"], "weights": weights, "fraction": (fraction, None), "gap": gap}
    # The hand computation needs every sequence: gather (index, logprobs) of the response tokens.
    local = []
    for mb in mbs:
        for b, i in enumerate(mb.index_B):
            mask = mb.loss_mask_BS[b] > 0
            local.append((i, mb.local["lp"][b][mask]))
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    by_index = dict(item for part in parts for item in part)
    T = max(len(s.response_ids) for s in seqs)
    lp, old, mask = torch.zeros(len(seqs), T), torch.zeros(len(seqs), T), torch.zeros(len(seqs), T)
    for i, s in enumerate(seqs):
        n = len(s.response_ids)
        lp[i, :n], old[i, :n], mask[i, :n] = by_index[i], torch.tensor(s.rollout_logprobs), 1.0
    adv = torch.tensor([s.advantage for s in seqs])
    if correction == "none":
        expected, hand = policy_loss(lp, old, adv, mask, aggregation=aggregation)
        hand_fraction = 0.0
    else:
        log_r = (lp - old) * mask
        seq = sequence_log_ratio(*sequence_sums(log_r, mask), "geometric_mean")
        w, changed = correction_weights(log_r, mask, correction, cap=cap, seq_log_ratio_B=seq)
        expected, hand = policy_loss(lp, lp, adv, mask, aggregation=aggregation, is_weight_BT=w)
        hand_fraction = changed.sum().item() / mask.sum().item()
    ratio = torch.exp(lp - old)[mask > 0].double()
    destroy_parallel()
    return {
        "loss": metrics["loss"],
        "expected": expected.item(),
        "clip_fraction": (metrics["clip_fraction"], hand["clip_fraction"]),
        "weights": weights,
        "micro_batches": len(mbs),
        "fraction": (fraction, hand_fraction),
        "gap": gap,
        "hand_gap": {"p50": torch.quantile(ratio, 0.5).item(), "max": ratio.max().item(),
                     "kl": (ratio - 1 - ratio.log()).mean().item()},  # fmt: skip
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


@pytest.mark.parametrize(
    ("aggregation", "correction", "cap"), [("token_mean", "tis", 1.6), ("seq_mean", "seq_tis", 1.15), ("token_mean", "mask", 1.6)]
)
def test_split_invariant_update_with_rollout_correction(
    tiny_checkpoint, aggregation: str, correction: str, cap: float
) -> None:
    tiny_checkpoint(NAME)
    whole = run_distributed(_worker, 1, 10_000, aggregation, correction, cap)[0]
    split = run_distributed(_worker, 1, 40, aggregation, correction, cap)[0]
    dp2 = run_distributed(_worker, 2, 40, aggregation, correction, cap)
    cp2 = run_distributed(_worker, 2, 10_000, aggregation, correction, cap, 2)
    assert abs(whole["loss"] - whole["expected"]) < 1e-6, (whole["loss"], whole["expected"])
    measured, by_hand = whole["fraction"]
    assert 0.05 < by_hand < 0.95, f"the batch must have corrected and untouched tokens ({by_hand:.2f})"
    assert abs(measured - by_hand) < 1e-9, (measured, by_hand)
    gap, hand = whole["gap"], whole["hand_gap"]
    assert gap["is_ratio_p50"] == pytest.approx(hand["p50"], rel=1e-5)
    assert gap["is_ratio_max"] == pytest.approx(hand["max"], rel=1e-5)
    assert gap["mismatch_kl"] == pytest.approx(hand["kl"], rel=1e-5)
    # The loss (which carries the weights) must agree to 1e-6 everywhere. Updated weights: 1e-6 for
    # micro-batch / DP splits; CP attention sums in another order, and Adam's first step (~lr x sign)
    # turns that noise on near-zero gradients into ~1e-6: the layouts' 1e-5 bound there.
    for label, run, bound in [("split", split, 1e-6), *[(f"dp2 rank {r}", x, 1e-6) for r, x in enumerate(dp2)],
                              *[(f"cp2 rank {r}", x, 1e-5) for r, x in enumerate(cp2)]]:  # fmt: skip
        assert abs(run["loss"] - whole["expected"]) < 1e-6, (label, run["loss"], whole["expected"])
        assert run["fraction"][0] == pytest.approx(measured, abs=1e-9), label
        assert run["gap"]["is_ratio_p50"] == pytest.approx(gap["is_ratio_p50"], rel=1e-5), label
        for name, w in whole["weights"].items():
            err = (run["weights"][name] - w).abs().max().item()
            assert err < bound, f"{label}: {name}: updated weights differ by {err:.2e}"
