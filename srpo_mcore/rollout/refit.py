"""Trainer shards -> full HF-named tensors, streamed in bounded buckets (for refit and export).

Owns the collectives of moving weights out of the trainer: every weight-map row is gathered over
the tensor-parallel group (shards reassembled by the row's split rule), broadcast from the pipeline
stage that owns it to the other stages, and converted to its HF tensors. Every rank of the model
walks the same rows in the same order (the calls are collective) and ends up with every tensor, so
each data-parallel replica can feed its own colocated engine.

Does not own: the name/layout table (``models.qwen2_5_vl.weight_map``) or the engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from srpo_mcore.checkpoint.transforms import tp_unshard
from srpo_mcore.models.qwen2_5_vl.model import Qwen25VLModel
from srpo_mcore.models.qwen2_5_vl.weight_map import WeightRow, canonical_name, global_name, to_hf, weight_rows

_LAYER = re.compile(r"^language_model\.decoder\.layers\.(\d+)\.")


def owner_stage(row: WeightRow, num_layers: int, pp: int) -> int:
    """The pipeline stage that holds `row`'s parameter."""
    m = _LAYER.match(row.mcore)
    if m:
        return int(m.group(1)) // (num_layers // pp)
    if row.mcore.startswith(("language_model.decoder.final_layernorm", "language_model.output_layer")):
        return pp - 1
    return 0  # embedding and the vision tower live on the first stage


def _gather_tp(shard: torch.Tensor, row: WeightRow) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if row.tp_dim is None or tp == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(tp)]
    dist.all_gather(parts, shard.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return tp_unshard(parts, dim=row.tp_dim, parts=row.tp_parts)


def _broadcast_pp(full: torch.Tensor | None, owner: int, device: torch.device) -> torch.Tensor:
    group = parallel_state.get_pipeline_model_parallel_group()
    src = dist.get_global_rank(group, owner)
    header = [None if full is None else (tuple(full.shape), full.dtype)]
    dist.broadcast_object_list(header, src=src, group=group)
    shape, dtype = header[0]  # type: ignore[misc]
    if full is None:
        full = torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(full, src=src, group=group)
    return full


def iter_hf_weights(
    model: Qwen25VLModel,
    *,
    bucket_bytes: int = 512 * 2**20,
    include_vision: bool = True,
    rows: Sequence[WeightRow] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every (HF name, full tensor) of the model on every rank, a bucket at a time.

    Args:
        bucket_bytes: Gathered bytes held before the bucket is handed on (memory bound).
        include_vision: False skips the vision tower and merger (e.g. frozen, already loaded).
        rows: Only these weight-map rows (the same on every rank), in this order; default all.
    """
    arch, layout = model.arch, model.layout
    pp = layout.pp
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    offset = pp_rank * (arch.text.num_layers // pp)
    params = {canonical_name(global_name(n, offset)): p for n, p in model.named_parameters()}
    device = next(model.parameters()).device  # receivers of a PP broadcast allocate where NCCL can reach
    bucket: list[tuple[str, torch.Tensor]] = []
    held = 0
    for row in weight_rows(arch) if rows is None else rows:
        if not include_vision and row.mcore.startswith("vision."):
            continue
        owner = owner_stage(row, arch.text.num_layers, pp)
        full = _gather_tp(params[row.mcore].detach(), row) if owner == pp_rank else None
        if pp > 1:
            full = _broadcast_pp(full, owner, device)
        assert full is not None
        for name, tensor in to_hf(row, full, arch):
            bucket.append((name, tensor))
            held += tensor.numel() * tensor.element_size()
        if held >= bucket_bytes:
            yield from bucket
            bucket, held = [], 0
    yield from bucket
