"""Context parallelism: the load-balanced sequence layout and K/V gathering across the CP group.

Owns:
- ``cp_slice``/``cp_unslice``: the sequence is cut into ``2*cp`` chunks; rank ``r`` keeps chunks
  ``r`` and ``2*cp-1-r`` (so causal work is balanced). This is the layout Megatron-Core's rotary
  embedding (``get_pos_emb_on_this_cp_rank``) and Transformer Engine's CP attention expect.
- ``gather_cp``: all-gather a ``[s, ...]`` tensor over the CP group into global order, with
  gradients reduce-scattered back (used for K and V by the local-spec attention).

Legend: ``S`` full sequence, ``s`` local sequence (S / cp).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import tensor_parallel


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


def gather_cp(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``[s, ...]`` local chunks of every CP rank -> ``[S, ...]`` in global order (autograd-aware)."""
    cp = group.size()
    if cp == 1:
        return x
    stacked = tensor_parallel.gather_from_sequence_parallel_region(x, True, group=group)
    return cp_unslice(list(stacked.chunk(cp, dim=0)), dim=0)
