"""Rollout/trainer mismatch: importance-sampling correction weights and the mismatch statistics.

The rollout engine samples from its own probabilities ``pi_rollout`` (its kernels, perhaps a lower
precision), which are never exactly the trainer's ``pi_trainer_old`` for the same weights. The
per-token ratio ``w_t = pi_trainer_old(y_t) / pi_rollout(y_t)`` measures the gap; this module owns
the pure tensor functions over it:

- ``correction_weights``: the weight each token's policy-gradient term gets under
  ``grpo.rollout_correction`` — truncated IS per token (``tis``: ``min(w_t, C)``) or per sequence
  (``seq_tis``: ``min(w_seq, C)``), or a 0/1 mask of tokens (``mask``) or whole sequences
  (``seq_mask``) whose ratio leaves ``[low, C]`` — and which tokens it changed (truncated or masked);
- ``sequence_log_ratio``: ``log w_seq`` from per-sequence sums (geometric mean or product of the
  token ratios), so that a caller holding only a context-parallel slice can reduce the sums first;
- ``mismatch_k3``: the per-token k3 estimate of KL(pi_rollout || pi_trainer) on the engine's samples.

Does not own: where the logprobs come from or any collective (``rl.policy_step``), the loss.

Legend: ``B`` sequences, ``T`` tokens (padded); ``mask_BT`` is 1 on real response tokens.
"""

from __future__ import annotations

import torch

from srpo_mcore.rl.loss import k3_kl

MODES = ("none", "tis", "seq_tis", "mask", "seq_mask")
SEQUENCE_MODES = ("seq_tis", "seq_mask")


def mismatch_k3(trainer_BT: torch.Tensor, rollout_BT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_rollout || pi_trainer) on tokens the engine sampled, float64.

    ``r - 1 - log r`` is >= 0; it is clamped there because at ratios within rounding of 1 the
    subtraction leaves values of order -1e-16.
    """
    return k3_kl(rollout_BT.double(), trainer_BT.double()).clamp_min(0.0)


def sequence_sums(log_ratio_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of log w_t, token count)`` per sequence, ``[B]`` each (over masked tokens)."""
    mask = mask_BT.to(log_ratio_BT.dtype)
    return (log_ratio_BT * mask).sum(dim=1), mask.sum(dim=1)


def sequence_log_ratio(log_sum_B: torch.Tensor, count_B: torch.Tensor, how: str) -> torch.Tensor:
    """``log w_seq`` ``[B]``: the mean (geometric mean of the ratios) or the sum (their product)."""
    if how == "geometric_mean":
        return log_sum_B / count_B.clamp_min(1)
    if how == "product":
        return log_sum_B
    raise ValueError(f"grpo.correction_seq_ratio must be geometric_mean or product, got {how!r}")


def correction_weights(
    log_ratio_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: str,
    *,
    cap: float,
    low: float = 0.0,
    seq_log_ratio_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[B, T]`` of the policy-gradient term and the tokens the correction changed.

    Args:
        log_ratio_BT: ``log pi_trainer_old - log pi_rollout`` of each sampled token.
        mask_BT: 1 on response tokens; weights and flags are 0 / False elsewhere.
        mode: One of ``MODES``; ``none`` gives weight 1 everywhere.
        cap: ``C``: truncation level (tis, seq_tis) or upper bound (mask modes), > 1.
        low: Lower bound of the mask modes; 0 means ``1 / cap``.
        seq_log_ratio_B: ``log w_seq`` per sequence (sequence modes; see `sequence_log_ratio`).

    Returns:
        ``(weight_BT, changed_BT)``: ``changed`` marks response tokens whose weight was truncated
        (tis modes) or zeroed (mask modes).
    """
    if mode not in MODES:
        raise ValueError(f"grpo.rollout_correction must be one of {', '.join(MODES)}, got {mode!r}")
    on = mask_BT > 0
    if mode == "none":
        return on.to(log_ratio_BT.dtype), torch.zeros_like(on)
    if mode in SEQUENCE_MODES:
        if seq_log_ratio_B is None:
            raise ValueError(f"grpo.rollout_correction={mode} needs the sequences' log ratios")
        log_w = seq_log_ratio_B[:, None].expand_as(log_ratio_BT)
    else:
        log_w = log_ratio_BT
    log_cap = torch.log(torch.tensor(cap, dtype=torch.float64)).item()
    if mode in ("tis", "seq_tis"):
        changed = (log_w > log_cap) & on
        weight = torch.exp(log_w.clamp(max=log_cap))
    else:
        log_low = torch.log(torch.tensor(low if low > 0 else 1.0 / cap, dtype=torch.float64)).item()
        changed = ((log_w > log_cap) | (log_w < log_low)) & on
        weight = (~changed).to(log_w.dtype)
    return weight * on.to(weight.dtype), changed
