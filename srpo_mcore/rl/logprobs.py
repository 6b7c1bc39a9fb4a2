"""Per-token log-probabilities and entropy from vocab-parallel logits, without gathering the vocabulary.

Owns: ``token_logprobs`` — ``log softmax(logits / T)[target]`` computed with Megatron's
vocab-parallel cross entropy (each TP rank holds ``V/tp`` logits; only scalars are reduced) — and
``token_entropy`` (a metric: max, sum of exp and sum of p*logit reduced over the TP group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


def token_logprobs(logits_BSV: torch.Tensor, targets_BS: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[B, S]`` log-probabilities of `targets_BS` under vocab-parallel ``[B, S, V/tp]`` logits."""
    logits = logits_BSV.float()
    if temperature != 1.0:
        logits = logits / temperature
    return -tensor_parallel.vocab_parallel_cross_entropy(logits, targets_BS)


@torch.no_grad()
def token_entropy(logits_BSV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[B, S]`` entropy of softmax(logits / T) over the full vocabulary, from ``V/tp`` shards."""
    z = logits_BSV.float() / temperature
    group = parallel_state.get_tensor_model_parallel_group() if dist.is_initialized() else None
    tp = dist.get_world_size(group) if group is not None else 1
    zmax = z.max(dim=-1, keepdim=True).values
    if tp > 1:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    z = z - zmax
    e = torch.exp(z)
    sums = torch.stack([e.sum(-1), (e * z).sum(-1)])
    if tp > 1:
        dist.all_reduce(sums, group=group)
    return torch.log(sums[0]) - sums[1] / sums[0]
