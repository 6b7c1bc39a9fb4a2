"""Per-token log-probabilities from vocab-parallel logits, without gathering the vocabulary.

Owns: ``token_logprobs`` — ``log softmax(logits / T)[target]`` computed with Megatron's
vocab-parallel cross entropy (each TP rank holds ``V/tp`` logits; only scalars are reduced).
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel


def token_logprobs(logits_BSV: torch.Tensor, targets_BS: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[B, S]`` log-probabilities of `targets_BS` under vocab-parallel ``[B, S, V/tp]`` logits."""
    logits = logits_BSV.float()
    if temperature != 1.0:
        logits = logits / temperature
    return -tensor_parallel.vocab_parallel_cross_entropy(logits, targets_BS)
