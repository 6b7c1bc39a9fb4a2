"""Context parallelism: load-balanced sequence slicing and a CP-correct local-spec attention.

Owns:
- ``cp_slice``/``cp_unslice``: the sequence is cut into ``2*cp`` chunks; rank ``r`` keeps chunks
  ``r`` and ``2*cp-1-r`` (so causal work is balanced). This is the layout Megatron-Core's rotary
  embedding (``get_pos_emb_on_this_cp_rank``) and Transformer Engine's CP attention expect.
- ``AllGatherKVAttention``: a drop-in for Megatron-Core's local ``DotProductAttention`` that is
  correct under CP: it all-gathers K and V over the CP group (gradients reduce-scattered back),
  restores global order, and applies the causal (and optional padding) mask by global positions.
  On GPU, Transformer Engine's own CP attention is used instead (see ``layer_specs``).

Legend: ``S`` full sequence, ``s`` local sequence (S / cp), ``b`` batch, ``n`` heads, ``d`` head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


def cp_chunk_ids(cp: int, rank: int) -> tuple[int, int]:
    """The two global chunk indexes rank `rank` holds."""
    return rank, 2 * cp - 1 - rank


def cp_slice(x: torch.Tensor, dim: int, cp: int, rank: int) -> torch.Tensor:
    """This CP rank's part of `x` along `dim` (two load-balanced chunks, concatenated)."""
    if cp == 1:
        return x
    if x.shape[dim] % (2 * cp):
        raise ValueError(f"sequence length {x.shape[dim]} is not divisible by 2*cp = {2 * cp}")
    chunks = x.chunk(2 * cp, dim=dim)
    a, b = cp_chunk_ids(cp, rank)
    return torch.cat([chunks[a], chunks[b]], dim=dim)


def cp_unslice(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Inverse of `cp_slice` given every rank's part (in rank order)."""
    cp = len(parts)
    if cp == 1:
        return parts[0]
    chunks: list[torch.Tensor | None] = [None] * (2 * cp)
    for rank, part in enumerate(parts):
        a, b = cp_chunk_ids(cp, rank)
        chunks[a], chunks[b] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)  # type: ignore[arg-type]


def cp_positions(s_local: int, cp: int, rank: int, device: torch.device) -> torch.Tensor:
    """Global positions of this rank's local tokens."""
    return cp_slice(torch.arange(s_local * cp, device=device), 0, cp, rank)


class AllGatherKVAttention(MegatronModule):
    """Core attention (local spec) that is exact under context parallelism. Signature as
    Megatron-Core's ``DotProductAttention``.

    ``attention_mask`` may be None (causal) or a boolean ``[b, 1, S, S]`` mask over the *full*
    sequence (True = masked), e.g. causal plus key padding; the rows of this rank's queries are used.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config)
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError("AllGatherKVAttention implements causal (optionally padded) attention only")
        tp = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.cp_group = pg_collection.cp if pg_collection is not None and hasattr(pg_collection, "cp") else None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("AllGatherKVAttention: packed sequences and attention bias are not supported")
        group = self.cp_group or parallel_state.get_context_parallel_group()
        cp, rank = group.size(), group.rank()
        s = query.shape[0]
        if cp > 1:
            key = cp_unslice(
                list(tensor_parallel.gather_from_sequence_parallel_region(key, True, group=group).chunk(cp, dim=0)),
                dim=0,
            )
            value = cp_unslice(
                list(tensor_parallel.gather_from_sequence_parallel_region(value, True, group=group).chunk(cp, dim=0)),
                dim=0,
            )
        S = key.shape[0]
        q_pos = cp_positions(s, cp, rank, query.device)
        if attention_mask is None:
            masked = torch.arange(S, device=query.device)[None, :] > q_pos[:, None]  # [s, S]
            masked = masked.view(1, 1, s, S)
        else:
            masked = attention_mask.index_select(2, q_pos) if cp > 1 else attention_mask
        rep = self.heads // self.groups
        if rep > 1:
            key = key.repeat_interleave(rep, dim=2)
            value = value.repeat_interleave(rep, dim=2)
        q = query.permute(1, 2, 0, 3)  # [b, n, s, d]
        k = key.permute(1, 2, 3, 0)  # [b, n, d, S]
        scores = torch.matmul(q, k) * self.scale
        scores = scores.masked_fill(masked, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        ctx = torch.matmul(probs, value.permute(1, 2, 0, 3))  # [b, n, s, d]
        b = ctx.shape[0]
        return ctx.permute(2, 0, 1, 3).reshape(s, b, -1)
