"""The clipped policy-gradient loss of GRPO, with optional k3 KL, and its diagnostics.

Owns: ``policy_loss`` — PPO-style clipped surrogate on per-token ratios ``exp(logp - logp_old)``
with separate low/high clip ranges, an optional dual-clip cap on the ratio (``ratio_cap``, applied
before clipping as the released SRPO code does) and optional per-token importance weights on the
policy-gradient term (rollout correction, ``rl.rollout_correction``), aggregated as a token mean over the batch (default) or a mean
of per-sequence means; optional ``kl_coef`` x k3 estimator ``exp(ref - logp) - (ref - logp) - 1``
against a frozen reference; and the metrics users watch (clip fraction, approximate KL to the
behaviour policy, mean ratio, KL to the reference).

Legend: ``B`` sequences, ``T`` response tokens (padded); ``mask_BT`` is 1 on real response tokens.
"""

from __future__ import annotations

import torch


def k3_kl(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    d = ref_logprobs_BT - logprobs_BT
    return torch.exp(d) - d - 1.0


def clipped_surrogate(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ratio_cap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``-min(r*A, clip(r, 1-lo, 1+hi)*A)``, the clipped-token flags and ``r``.

    With ``ratio_cap > 0`` the ratio is first capped, ``r = min(r, ratio_cap)`` (dual clip: bounds the
    loss of a negative-advantage token whose ratio ran away; no gradient flows through a capped
    ratio). The returned ``r`` is the uncapped ratio (a metric). The building block of
    `policy_loss` and of the trainer's per-token loss (which aggregates it with Megatron's
    token-count normalisation across micro-batches and data-parallel ranks).
    """
    ratio = torch.exp(logprobs_BT - old_logprobs_BT)
    r = ratio.clamp(max=ratio_cap) if ratio_cap > 0 else ratio
    adv = advantages_BT.to(logprobs_BT.dtype)
    unclipped = r * adv
    clipped = r.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), (unclipped != clipped), ratio


def _aggregate(x_BT: torch.Tensor, mask_BT: torch.Tensor, how: str) -> torch.Tensor:
    if how == "token_mean":
        return (x_BT * mask_BT).sum() / mask_BT.sum().clamp_min(1)
    if how == "seq_mean":
        per_seq = (x_BT * mask_BT).sum(dim=1) / mask_BT.sum(dim=1).clamp_min(1)
        return per_seq.mean()
    raise ValueError(f"grpo.aggregation must be token_mean or seq_mean, got {how!r}")


def policy_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    kl_coef: float = 0.0,
    ref_logprobs_BT: torch.Tensor | None = None,
    ratio_cap: float = 0.0,
    is_weight_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise and its metrics.

    Args:
        logprobs_BT: Current policy's logprobs of the sampled tokens (requires grad).
        old_logprobs_BT: Behaviour policy's logprobs (the rollout's), no grad.
        advantages_B: One advantage per sequence (broadcast over its tokens).
        mask_BT: 1 for response tokens that count, 0 for padding.
        kl_coef: Weight of the k3 KL; needs `ref_logprobs_BT` when > 0.
        ratio_cap: Dual-clip cap of the ratio (0: off).
        is_weight_BT: Rollout-correction weight of each token's policy-gradient term (None: 1).
    """
    mask = mask_BT.to(logprobs_BT.dtype)
    adv_BT = advantages_B[:, None].expand_as(logprobs_BT)
    per_token, is_clipped, ratio = clipped_surrogate(
        logprobs_BT, old_logprobs_BT, adv_BT, clip_low=clip_low, clip_high=clip_high, ratio_cap=ratio_cap
    )
    if is_weight_BT is not None:
        per_token = per_token * is_weight_BT.to(per_token.dtype)
    loss = _aggregate(per_token, mask, aggregation)
    metrics: dict[str, float] = {}
    if kl_coef > 0:
        if ref_logprobs_BT is None:
            raise ValueError("grpo.kl_coef > 0 needs reference-model logprobs")
        kl = _aggregate(k3_kl(logprobs_BT, ref_logprobs_BT), mask, aggregation)
        loss = loss + kl_coef * kl
        metrics["kl_ref"] = kl.item()
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        clipped_tokens = (is_clipped & (mask > 0)).sum()
        metrics["clip_fraction"] = (clipped_tokens / n).item()
        metrics["approx_kl_old"] = (((ratio - 1) - torch.log(ratio)) * mask).sum().div(n).item()
        metrics["ratio_mean"] = ((ratio * mask).sum() / n).item()
    return loss, metrics
