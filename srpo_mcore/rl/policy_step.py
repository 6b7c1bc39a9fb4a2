"""The GRPO policy update under Megatron-Core's pipeline schedule.

Owns two passes over a rank's micro-batches, both through ``get_forward_backward_func`` so that
pipeline, tensor, context and sequence parallelism are Megatron's own:

- ``forward_logprobs``: forward only; stores each micro-batch's per-token logprobs (vocab-parallel,
  this rank's context-parallel slice) in ``MicroBatch.local[name]`` on the last stage — the
  behaviour policy's logprobs before the update, or a frozen reference model's — and returns the
  rollout-vs-trainer logprob gap over the response tokens; for the behaviour pass also the
  mismatch statistics (k3 KL of rollout vs trainer, quantiles of the ratio pi_trainer / pi_rollout).
- ``set_rollout_correction``: the rollout-correction weights of ``grpo.rollout_correction``
  (``rl.rollout_correction``) stored as ``MicroBatch.local["is_weight"]``; a sequence's ratio is
  reduced over the context-parallel group first, so every layout weights the same tokens alike.
- ``train_step``: forward + backward of the clipped surrogate (+ k3 KL), then Megatron's optimizer
  step (gradient clipping by the global norm, Adam). The loss is a per-token loss in Megatron's
  three-value form ``(sum of weighted token losses, token count, report)`` with
  ``calculate_per_token_loss``: Megatron divides the gradients by the token count summed over all
  micro-batches and data-parallel (x context-parallel) ranks, so ``token_mean`` is the mean over
  every response token of the global batch and ``seq_mean`` (token weight 1/length, count = 1 per
  sequence) the mean of per-sequence means — independent of how the batch was split.

Metrics are summed over micro-batches and ranks (each value counted once per replica slice) and
returned identically on every rank.

Does not own: building micro-batches (``rl.batch``), the optimizer (``rl.optim``), the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from srpo_mcore.config import GRPOConfig
from srpo_mcore.parallel.context import cp_slice
from srpo_mcore.rl.batch import MicroBatch
from srpo_mcore.rl.logprobs import token_entropy, token_logprobs
from srpo_mcore.rl.loss import clipped_surrogate, k3_kl
from srpo_mcore.rl.rollout_correction import (
    SEQUENCE_MODES,
    correction_weights,
    mismatch_k3,
    sequence_log_ratio,
    sequence_sums,
)

_TRAIN_SUMS = ("tokens", "loss", "weight", "clipped", "ratio", "approx_kl_old", "kl_ref", "entropy")
_GAP_SUMS = ("tokens", "abs_gap", "mismatch_k3")
_QUANTILES = (("p01", 0.01), ("p50", 0.5), ("p99", 0.99))


def cp_local(x: torch.Tensor) -> torch.Tensor:
    """This context-parallel rank's slice of a ``[B, S]`` tensor."""
    cp = ps.get_context_parallel_world_size()
    return cp_slice(x, 1, cp, ps.get_context_parallel_rank()) if cp > 1 else x


def _counts_metrics() -> bool:
    """Whether this rank's metric sums count (tp-rank 0 of the last stage: each value once per replica slice)."""
    return ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0


def reduce_sums(sums: torch.Tensor, op: Any = dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce per-rank metric sums (CPU) over the world; only tp-rank-0 ranks of the last stage contribute."""
    if not _counts_metrics():
        sums = torch.zeros_like(sums)
    if dist.is_initialized() and dist.get_world_size() > 1:
        nccl = dist.get_backend() == "nccl"
        sums = sums.to(torch.device("cuda", torch.cuda.current_device())) if nccl else sums.clone()
        dist.all_reduce(sums, op=op)
    return sums.cpu()


def gather_values(values: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D float `values` (only tp-rank-0 ranks of the last stage contribute), on CPU."""
    local = values.detach().double().cpu().flatten() if _counts_metrics() else torch.zeros(0, dtype=torch.float64)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    n = torch.tensor([local.numel()], dtype=torch.long, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    padded = torch.full((int(n.item()),), float("nan"), dtype=torch.float64)
    padded[: local.numel()] = local
    padded = padded.to(device) if device is not None else padded
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    out = torch.cat(parts).cpu()
    return out[~torch.isnan(out)]


def run_schedule(
    model: Sequence[Any], micro_batches: Sequence[MicroBatch], loss_fn: Any, *, forward_only: bool
) -> list[dict[str, torch.Tensor]]:
    def forward_step(data_iterator: Any, chunk: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        logits = chunk(
            mb.input_ids_BS,
            position_ids=mb.position_ids_3BS,
            pixel_values=mb.pixel_values,
            image_grid_thw=mb.image_grid_thw,
            placeholder_mask=mb.placeholder_mask_BS,
        )
        return logits, lambda out: loss_fn(mb, out)

    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=list(model),
        num_microbatches=len(micro_batches),
        seq_length=max(mb.input_ids_BS.shape[1] for mb in micro_batches),
        micro_batch_size=max(mb.input_ids_BS.shape[0] for mb in micro_batches),
        forward_only=forward_only,
    )


def forward_logprobs(
    model: Sequence[Any],
    micro_batches: Sequence[MicroBatch],
    *,
    name: str,
    temperature: float = 1.0,
    mismatch: bool = False,
) -> dict[str, float]:
    """Store ``MicroBatch.local[name]`` (last stage) and return the gap to the rollout logprobs.

    Args:
        mismatch: Also return the mismatch statistics of these logprobs against the engine's
            (for the behaviour pass: the ratio the rollout correction uses).

    Returns:
        ``{"logprob_gap_max", "logprob_gap_mean", "tokens"}`` over all response tokens of the step;
        with `mismatch` also ``mismatch_kl`` (k3 estimate of KL(rollout || trainer), token mean) and
        ``is_ratio_{p01,p50,p99,min,max}`` (quantiles of pi_trainer / pi_rollout over the tokens).
    """
    gap_max = torch.zeros(1, dtype=torch.float64)
    log_ratios: list[torch.Tensor] = []

    def loss_fn(mb: MicroBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lp = token_logprobs(logits, cp_local(mb.targets_BS), temperature)
        mb.local[name] = lp.detach()
        mask = cp_local(mb.loss_mask_BS)
        rollout = cp_local(mb.rollout_logprobs_BS)
        gap = (lp - rollout).abs() * mask
        gap_max[0] = max(gap_max[0].item(), gap.max().item() if gap.numel() else 0.0)
        if mismatch:
            log_ratios.append((lp - rollout)[mask > 0].detach())
        k3 = (mismatch_k3(lp, rollout) * mask).sum()
        sums = torch.stack([mask.sum(), gap.sum(), k3]).double().cpu()
        return lp.sum() * 0, torch.zeros((), dtype=torch.int, device=lp.device), {"sums": sums}

    with torch.no_grad():
        reports = run_schedule(model, micro_batches, loss_fn, forward_only=True)
    sums = torch.zeros(len(_GAP_SUMS), dtype=torch.float64)
    for r in reports:
        sums += r["sums"]
    sums = reduce_sums(sums)
    worst = reduce_sums(gap_max, dist.ReduceOp.MAX)
    n = max(sums[0].item(), 1.0)
    out = {"logprob_gap_max": worst.item(), "logprob_gap_mean": sums[1].item() / n, "tokens": sums[0].item()}
    if mismatch:
        ratio = torch.exp(gather_values(torch.cat(log_ratios) if log_ratios else torch.zeros(0)))
        out["mismatch_kl"] = sums[2].item() / n
        ordered = ratio.sort().values if ratio.numel() else torch.ones(1, dtype=torch.float64)
        for key, q in (*_QUANTILES, ("min", 0.0), ("max", 1.0)):
            out[f"is_ratio_{key}"] = _quantile(ordered, q)
    return out


def _quantile(ordered: torch.Tensor, q: float) -> float:
    """The `q` quantile of sorted values, linearly interpolated (torch.quantile's rule, any size)."""
    pos = q * (ordered.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.numel() - 1)
    return (ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])).item()


def set_rollout_correction(
    micro_batches: Sequence[MicroBatch], cfg: GRPOConfig, *, old_logprobs: str = "old_logprobs"
) -> dict[str, float]:
    """Store the correction weights ``MicroBatch.local["is_weight"]`` (last stage); return their metrics.

    The ratio of each token is ``exp(local[old_logprobs] - rollout logprobs)``. Collective (the
    metrics are reduced over the world; sequence modes reduce over the context-parallel group).

    Returns:
        ``{"correction_fraction", "correction_weight_mean"}``: the fraction of response tokens the
        correction truncated or masked, and the mean weight of a response token.
    """
    sums = torch.zeros(3, dtype=torch.float64)  # tokens, changed, weight
    if cfg.rollout_correction != "none" and ps.is_pipeline_last_stage():
        cp = ps.get_context_parallel_world_size()
        for mb in micro_batches:
            mask = cp_local(mb.loss_mask_BS)
            log_ratio = (mb.local[old_logprobs] - cp_local(mb.rollout_logprobs_BS)) * mask
            seq = None
            if cfg.rollout_correction in SEQUENCE_MODES:
                log_sum, count = sequence_sums(log_ratio.double(), mask)
                if cp > 1:  # a sequence's tokens are spread over the context-parallel ranks
                    both = torch.stack([log_sum, count])
                    dist.all_reduce(both, group=ps.get_context_parallel_group())
                    log_sum, count = both[0], both[1]
                seq = sequence_log_ratio(log_sum, count, cfg.correction_seq_ratio)
            weight, changed = correction_weights(
                log_ratio.double(),
                mask,
                cfg.rollout_correction,
                cap=cfg.correction_cap,
                low=cfg.correction_low,
                seq_log_ratio_B=seq,
            )
            mb.local["is_weight"] = weight.to(log_ratio.dtype)
            sums += torch.stack([mask.sum().double(), changed.sum().double(), weight.sum()]).cpu()
    sums = reduce_sums(sums)
    n = max(sums[0].item(), 1.0)
    if cfg.rollout_correction == "none":
        return {"correction_fraction": 0.0, "correction_weight_mean": 1.0}
    return {"correction_fraction": sums[1].item() / n, "correction_weight_mean": sums[2].item() / n}


def train_step(
    model: Sequence[Any],
    optimizer: Any,
    micro_batches: Sequence[MicroBatch],
    cfg: GRPOConfig,
    *,
    temperature: float = 1.0,
    old_logprobs: str = "old_logprobs",
) -> dict[str, float]:
    """One optimizer update on this rank's micro-batches; returns the step's metrics (every rank).

    Args:
        model: Megatron DDP-wrapped model chunks.
        optimizer: Megatron optimizer.
        micro_batches: This rank's micro-batches (the same plan on every rank of the replica).
        cfg: Clip ranges, ratio cap, aggregation, KL coefficient (rollout-correction weights, when
            set, come from ``MicroBatch.local["is_weight"]``: `set_rollout_correction`).
        old_logprobs: Key of ``MicroBatch.local`` holding the behaviour logprobs; when absent the
            rollout engine's logprobs are used.
    """
    kl_coef = cfg.kl_coef

    def loss_fn(mb: MicroBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lp = token_logprobs(logits, cp_local(mb.targets_BS), temperature)
        mask, weight = cp_local(mb.loss_mask_BS), cp_local(mb.token_weight_BS)
        old = mb.local.get(old_logprobs, cp_local(mb.rollout_logprobs_BS))
        per_token, clipped, ratio = clipped_surrogate(
            lp, old, cp_local(mb.advantages_BS), clip_low=cfg.clip_low, clip_high=cfg.clip_high, ratio_cap=cfg.ratio_cap
        )
        if "is_weight" in mb.local:  # rollout correction: weights the policy-gradient term only
            per_token = per_token * mb.local["is_weight"]
        kl = torch.zeros_like(lp)
        if kl_coef > 0:
            kl = k3_kl(lp, mb.local["ref_logprobs"])
            per_token = per_token + kl_coef * kl
        w = weight * mask
        loss = (per_token * w).sum()
        if cfg.aggregation == "token_mean":
            count = mask.sum()
        else:  # one unit per sequence with response tokens, counted once across context-parallel ranks
            full = mb.loss_mask_BS.sum(dim=1) > 0
            count = full.sum().float() if ps.get_context_parallel_rank() == 0 else torch.zeros((), device=lp.device)
        with torch.no_grad():
            ent = token_entropy(logits.detach(), temperature)
            r = ratio.detach()
            sums = (
                torch.stack(
                    [
                        mask.sum(),
                        loss.detach(),
                        w.sum(),
                        (clipped & (mask > 0)).sum().float(),
                        (r * mask).sum(),
                        (((r - 1) - torch.log(r)) * mask).sum(),
                        (kl.detach() * mask).sum(),
                        (ent * mask).sum(),
                    ]
                )
                .double()
                .cpu()
            )
        return loss, count.round().to(torch.int), {"sums": sums}

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_schedule(model, micro_batches, loss_fn, forward_only=False)
    ok, grad_norm, _ = optimizer.step()
    sums = torch.zeros(len(_TRAIN_SUMS), dtype=torch.float64)
    for r in reports:
        sums += r["sums"]
    s = dict(zip(_TRAIN_SUMS, reduce_sums(sums).tolist()))
    n = max(s["tokens"], 1.0)
    return {
        "loss": s["loss"] / max(s["weight"], 1e-12),
        "clip_fraction": s["clipped"] / n,
        "ratio_mean": s["ratio"] / n,
        "approx_kl_old": s["approx_kl_old"] / n,
        "kl_ref": s["kl_ref"] / n,
        "entropy": s["entropy"] / n,
        "tokens": s["tokens"],
        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        "update_ok": float(bool(ok)),
    }
