"""Group-relative advantages (GRPO) and the accuracy filter of the SRPO recipe.

Owns pure tensor functions over rewards arranged as ``[G, N]`` (G prompt groups of N samples):
``group_advantages`` = (r - mean_group) / (std_group + eps) (std optional; population std, as the
GRPO paper and the SRPO recipe compute it) and ``accuracy_filter``, which keeps groups whose mean
accuracy lies in [low, high] — groups that are all right or all wrong carry no learning signal.

Legend: ``G`` groups (prompts), ``N`` samples per group.
"""

from __future__ import annotations

import torch


def group_advantages(rewards_GN: torch.Tensor, *, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Advantages ``[G, N]``: reward minus its group's mean, divided by the group's std + eps."""
    centered = rewards_GN - rewards_GN.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered
    return centered / (rewards_GN.std(dim=1, unbiased=False, keepdim=True) + eps)


def accuracy_filter(correct_GN: torch.Tensor, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Boolean ``[G]``: groups whose mean accuracy lies in [low, high] (inclusive)."""
    acc = correct_GN.float().mean(dim=1)
    return (acc >= low - 1e-12) & (acc <= high + 1e-12)
