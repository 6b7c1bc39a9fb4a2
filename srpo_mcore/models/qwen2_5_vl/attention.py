"""Core attention for the local spec: PyTorch SDPA kernels, exact under context parallelism.

Owns: ``LocalAttention``, a drop-in for Megatron-Core's ``DotProductAttention`` (same constructor
and forward signature) that
- computes attention with ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on
  CPU and GPU; GQA without materialising repeated K/V),
- for the causal decoder under CP all-gathers K and V over the CP group (``parallel.context``)
  and masks by *global* positions of the load-balanced chunks,
- for the vision tower (``AttnMaskType.arbitrary``) takes the block-diagonal segment mask.

Masks are boolean, True = masked. A query row is never fully masked (a padding token may attend
to itself), so padded rows stay finite and cannot poison real tokens through ``0 * NaN``.
Transformer Engine's attention replaces this on GPU (``layer_specs``).

Legend: ``S`` full sequence, ``s`` local sequence (S / cp), ``b`` batch, ``n`` heads, ``g`` KV groups,
``d`` head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from srpo_mcore.parallel.context import cp_positions, gather_cp


class LocalAttention(MegatronModule):
    """SDPA core attention; causal (CP-aware, optional padding mask) or arbitrary-mask."""

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
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.arbitrary):
            raise ValueError(f"LocalAttention supports causal and arbitrary masks, not {attn_mask_type}")
        self.causal = attn_mask_type == AttnMaskType.causal
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None

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
        """``[s, b, n, d]`` queries, ``[s, b, g, d]`` keys/values -> ``[s, b, n*d]``."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("LocalAttention: packed sequences and attention bias need the Transformer Engine spec")
        s, b = query.shape[:2]
        mask = None  # [b or 1, 1, s, S] bool, True = masked
        is_causal = False
        if self.causal:
            group = self.cp_group or parallel_state.get_context_parallel_group()
            cp = group.size()
            key, value = gather_cp(key, group), gather_cp(value, group)
            S = key.shape[0]
            if attention_mask is None and cp == 1:
                is_causal = True
            else:
                q_pos = cp_positions(s, cp, group.rank(), query.device)
                if attention_mask is None:
                    mask = (torch.arange(S, device=query.device)[None, :] > q_pos[:, None]).view(1, 1, s, S)
                else:
                    mask = attention_mask.index_select(2, q_pos) if cp > 1 else attention_mask
                self_pos = torch.zeros(s, S, dtype=torch.bool, device=query.device)
                self_pos[torch.arange(s), q_pos] = True
                mask = mask & ~self_pos
        elif attention_mask is not None:
            mask = attention_mask
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if mask is None else ~mask,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)
