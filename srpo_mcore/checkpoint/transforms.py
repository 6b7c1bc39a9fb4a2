"""Pure tensor transforms between HF and Megatron-Core layouts. No process groups, no IO.

Owns: fusing/splitting attention QKV (GQA interleave: Megatron stores, for each query group, its
query heads followed by that group's key and value head), the vision tower's ``[q; k; v]`` QKV
(an MHA special case), SwiGLU gate/up fusion, the Conv3d patch embedding as a linear map, and
slicing a full tensor into its tensor-parallel shard (and back).

Every function is exact (pure reindexing), so HF -> Megatron -> HF round trips are bit-exact.
"""

from __future__ import annotations

import torch


def fuse_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_query_groups: int, head_dim: int
) -> torch.Tensor:
    """HF q/k/v projections (weights ``[out, in]`` or biases ``[out]``) -> Megatron ``linear_qkv``."""
    g = num_query_groups
    heads_per_group = q.shape[0] // head_dim // g
    rest = q.shape[1:]
    qg = q.reshape(g, heads_per_group * head_dim, *rest)
    kg = k.reshape(g, head_dim, *rest)
    vg = v.reshape(g, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


def split_qkv(
    qkv: torch.Tensor, *, num_query_groups: int, num_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv`."""
    g = num_query_groups
    hpg = num_heads // g
    rest = qkv.shape[1:]
    grouped = qkv.reshape(g, (hpg + 2) * head_dim, *rest)
    q, k, v = torch.split(grouped, [hpg * head_dim, head_dim, head_dim], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def stacked_qkv_to_megatron(qkv: torch.Tensor, *, num_heads: int, head_dim: int) -> torch.Tensor:
    """HF vision ``attn.qkv`` (``[q; k; v]`` stacked) -> Megatron's per-head interleave."""
    q, k, v = qkv.chunk(3, dim=0)
    return fuse_qkv(q, k, v, num_query_groups=num_heads, head_dim=head_dim)


def megatron_to_stacked_qkv(qkv: torch.Tensor, *, num_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of `stacked_qkv_to_megatron`."""
    return torch.cat(split_qkv(qkv, num_query_groups=num_heads, num_heads=num_heads, head_dim=head_dim), dim=0)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF gate_proj/up_proj -> Megatron ``linear_fc1`` (``[gate; up]``)."""
    return torch.cat([gate, up], dim=0)


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_gate_up`."""
    gate, up = fc1.chunk(2, dim=0)
    return gate, up


def conv3d_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """Conv3d weight ``[D, C, T, P, P]`` (kernel == stride) -> linear weight ``[D, C*T*P*P]``."""
    return weight.reshape(weight.shape[0], -1)


def linear_to_conv3d(
    weight: torch.Tensor, *, in_channels: int, temporal_patch_size: int, patch_size: int
) -> torch.Tensor:
    """Inverse of `conv3d_to_linear`."""
    return weight.reshape(weight.shape[0], in_channels, temporal_patch_size, patch_size, patch_size)


def tp_shard(full: torch.Tensor, *, dim: int | None, parts: int, tp: int, rank: int) -> torch.Tensor:
    """This rank's tensor-parallel shard of `full`.

    Args:
        dim: Partition dimension, or None for a replicated tensor.
        parts: Number of independently sharded blocks stacked along `dim` (2 for ``[gate; up]``).
    """
    if dim is None or tp == 1:
        return full
    if full.shape[dim] % (parts * tp):
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} does not split into {parts}x{tp} shards")
    return torch.cat([block.chunk(tp, dim=dim)[rank] for block in full.chunk(parts, dim=dim)], dim=dim)


def tp_unshard(shards: list[torch.Tensor], *, dim: int | None, parts: int) -> torch.Tensor:
    """Inverse of `tp_shard` over all ranks' shards (in rank order)."""
    if dim is None or len(shards) == 1:
        return shards[0]
    blocks = [s.chunk(parts, dim=dim) for s in shards]
    return torch.cat([torch.cat([b[p] for b in blocks], dim=dim) for p in range(parts)], dim=dim)
