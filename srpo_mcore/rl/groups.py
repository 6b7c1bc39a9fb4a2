"""Rollout groups: generate and score a step's prompts across ranks, then pick what to train on.

Owns:

- ``rollout_groups``: every engine generates a contiguous share of the step's prompts (an engine
  per rank, or one per block of ranks that then all submit the block's share), scores its samples
  with the SRPO reward, and all-gathers samples + reward breakdowns so that every rank ends up with
  every group in prompt order. Each prompt carries its own sampling seed, so its samples do
  not depend on which rank or engine generated them.
- ``select_groups``: GRPO's group-normalised advantages and the accuracy filter over the groups
  (accuracy = the final answer's correctness), with the step's filter metrics.

Does not own: the engine, the reward formulas, the advantage maths (``rl.advantages``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from srpo_mcore.config import GRPOConfig
from srpo_mcore.rl.advantages import accuracy_filter, group_advantages
from srpo_mcore.rl.rewards import RewardBreakdown, RewardScorer
from srpo_mcore.rollout.distribute import engine_of, gather_samples, shard_bounds
from srpo_mcore.rollout.types import RolloutRequest, RolloutSample


@dataclass
class Group:
    """One prompt, its samples and their rewards."""

    request: RolloutRequest
    gold: str
    samples: list[RolloutSample]
    rewards: list[RewardBreakdown]
    advantages: list[float] | None = None


def request_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of prompt `index` of `step` (independent of ranks and batching)."""
    return (seed * 1_000_003 + step * 10_007 + index * 101) % (2**31 - 1)


def score_samples(
    scorer: RewardScorer, samples: Sequence[RolloutSample], golds: Sequence[str]
) -> list[RewardBreakdown]:
    """Reward breakdowns of `samples` (lengths are the sampled token counts)."""
    return scorer.score([s.text for s in samples], list(golds), response_lengths=[len(s.token_ids) for s in samples])


def rollout_groups(
    engine: Any,
    scorer: RewardScorer,
    requests: Sequence[RolloutRequest],
    golds: Sequence[str],
    *,
    seeds: Sequence[int],
    ranks_per_engine: int = 1,
) -> list[Group]:
    """Generate ``rollout.n`` samples per request and score them; every rank gets every group.

    Args:
        engine: A ``RolloutEngine`` (anything with its ``generate``).
        scorer: The reward scorer.
        seeds: One sampling seed per request (see `request_seed`).
        ranks_per_engine: Consecutive ranks sharing one engine (the engine's ``ranks_per_engine``):
            each of them submits the engine's share of the requests.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    index, engines = engine_of(rank, world, ranks_per_engine)
    start, end = shard_bounds(len(requests), index, engines)
    local: list[tuple[list[RolloutSample], list[RewardBreakdown]]] = []
    if end > start:
        samples = engine.generate(list(requests[start:end]), seeds=list(seeds[start:end]))
        flat = [s for group in samples for s in group]
        flat_golds = [golds[start + i] for i, group in enumerate(samples) for _ in group]
        rewards = iter(score_samples(scorer, flat, flat_golds))
        local = [(group, [next(rewards) for _ in group]) for group in samples]
    gathered = gather_samples(local, ranks_per_engine=ranks_per_engine)
    return [
        Group(request=req, gold=gold, samples=samples, rewards=rewards)
        for req, gold, (samples, rewards) in zip(requests, golds, gathered)
    ]


def select_groups(groups: Sequence[Group], cfg: GRPOConfig) -> tuple[list[Group], dict[str, float]]:
    """Set each group's advantages and keep those the accuracy filter passes.

    Returns:
        The kept groups (with ``advantages``) and ``grpo/*`` metrics.
    """
    if not groups:
        return [], {
            "grpo/groups_total": 0.0,
            "grpo/groups_kept": 0.0,
            "grpo/groups_kept_fraction": 0.0,
            "grpo/advantage_abs_mean": 0.0,
        }
    sizes = {len(g.samples) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups of different sizes {sorted(sizes)}: every prompt needs rollout.n samples")
    rewards_GN = torch.tensor([[r.total for r in g.rewards] for g in groups], dtype=torch.float64)
    correct_GN = torch.tensor([[r.last_correct for r in g.rewards] for g in groups])
    adv_GN = group_advantages(rewards_GN, std=cfg.std, eps=cfg.eps)
    keep_G = (
        accuracy_filter(correct_GN, cfg.accuracy_low, cfg.accuracy_high)
        if cfg.filter_accuracy
        else torch.ones(len(groups), dtype=torch.bool)
    )
    kept = []
    for g, adv, keep in zip(groups, adv_GN.tolist(), keep_G.tolist()):
        g.advantages = adv
        if keep:
            kept.append(g)
    metrics = {
        "grpo/groups_total": float(len(groups)),
        "grpo/groups_kept": float(len(kept)),
        "grpo/groups_kept_fraction": len(kept) / len(groups),
        "grpo/advantage_abs_mean": float(adv_GN.abs().mean()),
    }
    return kept, metrics
