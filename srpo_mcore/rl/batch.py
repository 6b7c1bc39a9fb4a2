"""Training sequences and micro-batches of the policy update.

Owns the data contract between "scored rollouts" and "the Megatron schedule":

- ``TrainSequence``: one sampled response with its prompt, advantage, the rollout engine's
  logprobs and the prompt's vision inputs.
- ``shard_for_dp``: which sequences a data-parallel rank trains (longest first, dealt round-robin so
  every rank gets a similar token count; every rank of one model replica gets the same list).
- ``plan_micro_batches``: groups of sequences whose padded size (sequences x longest, rounded up to
  the layout's multiple) stays within the token budget; a sequence longer than the budget gets a
  micro-batch of its own. Deterministic, so every pipeline stage of a replica builds the same plan.
- ``collate``: right-padded ``MicroBatch`` tensors. Right padding needs no attention mask: under the
  causal mask a real token never attends to the padding after it, and padded positions carry no loss.

Does not own: logprobs or the loss (``rl.policy_step``), advantages (``rl.advantages``).

Legend: ``B`` sequences of a micro-batch, ``S`` padded length (prompt + response).
Targets are shifted: position ``t`` predicts token ``t + 1``; ``loss_mask_BS[b, t]`` is 1 exactly
when token ``t + 1`` is a response token of sequence ``b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class VisionInputs:
    """What the HF processor returns for a prompt's images (shared by the prompt's samples)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


@dataclass(frozen=True)
class TrainSequence:
    """One response to train on."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    advantage: float
    rollout_logprobs: tuple[float, ...]
    """The engine's logprobs of ``response_ids`` (same length)."""
    vision: VisionInputs | None = None
    group: int = 0
    """Index of the prompt group the response belongs to."""
    prompt_positions: torch.Tensor | None = None
    """``[3, P]`` mRoPE position ids of the prompt (None: text positions ``0..P-1``). Response tokens
    continue from the prompt's largest position + 1, as the engine numbers them when decoding."""

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class MicroBatch:
    """Right-padded tensors of a few sequences (``B x S``)."""

    input_ids_BS: torch.Tensor
    targets_BS: torch.Tensor
    loss_mask_BS: torch.Tensor
    """1.0 where the target is a response token."""
    token_weight_BS: torch.Tensor
    """Aggregation weight of each response token: 1 (token mean) or 1 / response length (sequence mean)."""
    advantages_BS: torch.Tensor
    rollout_logprobs_BS: torch.Tensor
    position_ids_3BS: torch.Tensor
    """mRoPE position ids (the prompt's own, then consecutive for the response and padding)."""
    placeholder_mask_BS: torch.Tensor
    """True on prompt tokens: only there may image/video tokens take vision features."""
    index_B: list[int]
    """Positions of the sequences in the list `collate` was given."""
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    local: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-token tensors computed on this rank in this rank's sequence layout (context-parallel
    slice), e.g. ``old_logprobs`` and ``ref_logprobs`` from the forward-only passes."""

    def to(self, device: torch.device) -> MicroBatch:
        """Move every tensor to `device` in place (returns self)."""
        for name in ("input_ids_BS", "targets_BS", "loss_mask_BS", "token_weight_BS", "advantages_BS",
                     "rollout_logprobs_BS", "position_ids_3BS", "placeholder_mask_BS", "pixel_values",
                     "image_grid_thw"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    @property
    def num_response_tokens(self) -> int:
        return int(self.loss_mask_BS.sum().item())


def shard_for_dp(sequences: Sequence[TrainSequence], dp_rank: int, dp_size: int) -> list[int]:
    """Indices of the sequences data-parallel rank `dp_rank` trains (balanced by length)."""
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    return [i for k, i in enumerate(order) if k % dp_size == dp_rank]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_micro_batches(lengths: Sequence[int], token_budget: int, pad_multiple: int = 1) -> list[list[int]]:
    """Group sequence indices into micro-batches of at most `token_budget` padded tokens.

    Sequences are taken longest first; a micro-batch's padded size is its count times its longest
    length rounded up to `pad_multiple`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    plan: list[list[int]] = []
    for i in order:
        if plan:
            padded = _round_up(lengths[plan[-1][0]], pad_multiple)
            if (len(plan[-1]) + 1) * padded <= token_budget:
                plan[-1].append(i)
                continue
        plan.append([i])
    return plan


def collate(
    sequences: Sequence[TrainSequence],
    index: Sequence[int],
    *,
    pad_id: int,
    pad_multiple: int = 1,
    aggregation: str = "token_mean",
) -> MicroBatch:
    """Right-padded micro-batch of ``sequences[i] for i in index``."""
    if aggregation not in ("token_mean", "seq_mean"):
        raise ValueError(f"grpo.aggregation must be token_mean or seq_mean, got {aggregation!r}")
    chosen = [sequences[i] for i in index]
    S = _round_up(max(len(s) for s in chosen), pad_multiple)
    B = len(chosen)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    targets = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, S)
    weight = torch.zeros(B, S)
    adv = torch.zeros(B, S)
    old = torch.zeros(B, S)
    pos = torch.zeros(3, B, S, dtype=torch.long)
    in_prompt = torch.zeros(B, S, dtype=torch.bool)
    for b, s in enumerate(chosen):
        n_p, n_r = len(s.prompt_ids), len(s.response_ids)
        if n_p == 0:
            raise ValueError(f"sequence {index[b]}: empty prompt (a response needs the prompt token it follows)")
        prompt_pos = s.prompt_positions if s.prompt_positions is not None else torch.arange(n_p).expand(3, n_p)
        if tuple(prompt_pos.shape) != (3, n_p):
            raise ValueError(f"sequence {index[b]}: prompt positions {tuple(prompt_pos.shape)} for {n_p} prompt tokens")
        pos[:, b, :n_p] = prompt_pos
        pos[:, b, n_p:] = int(prompt_pos.max()) + 1 + torch.arange(S - n_p)
        in_prompt[b, :n_p] = True
        if n_r != len(s.rollout_logprobs):
            raise ValueError(f"sequence {index[b]}: {n_r} response tokens but {len(s.rollout_logprobs)} logprobs")
        full = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        ids[b, : n_p + n_r] = full
        targets[b, : n_p + n_r - 1] = full[1:]
        span = slice(n_p - 1, n_p + n_r - 1)  # positions whose next token is a response token
        mask[b, span] = 1.0
        weight[b, span] = 1.0 if aggregation == "token_mean" else 1.0 / max(n_r, 1)
        adv[b, span] = s.advantage
        old[b, span] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    vis = [s.vision for s in chosen if s.vision is not None]
    return MicroBatch(
        input_ids_BS=ids,
        targets_BS=targets,
        loss_mask_BS=mask,
        token_weight_BS=weight,
        advantages_BS=adv,
        rollout_logprobs_BS=old,
        position_ids_3BS=pos,
        placeholder_mask_BS=in_prompt,
        index_B=list(index),
        pixel_values=torch.cat([v.pixel_values for v in vis]) if vis else None,
        image_grid_thw=torch.cat([v.image_grid_thw for v in vis]) if vis else None,
    )
