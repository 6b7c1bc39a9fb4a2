"""Load an HF Qwen2.5-VL checkpoint into this rank's ``Qwen25VLModel`` shard.

Owns: walking this rank's parameters, finding each one's row in the weight map (global layer
index for this pipeline stage; Transformer Engine's fused-norm names mapped to the local ones),
building the full tensor from the HF tensors (read lazily) and cutting this rank's TP shard
(``hf_shard``, also what the streaming converter writes) — with an error naming the parameter,
tensor and shapes when anything does not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core import parallel_state

from srpo_mcore.checkpoint.hf_io import HFCheckpoint
from srpo_mcore.checkpoint.transforms import tp_shard
from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
from srpo_mcore.models.qwen2_5_vl.model import Qwen25VLModel
from srpo_mcore.models.qwen2_5_vl.weight_map import (
    WeightRow,
    canonical_name,
    global_name,
    hub_name,
    to_mcore,
    weight_rows,
)


def rows_for_model(model: Qwen25VLModel) -> list[tuple[str, torch.nn.Parameter, WeightRow]]:
    """(local name, parameter, weight-map row) for every parameter of this rank's model."""
    arch = model.arch
    rows = {r.mcore: r for r in weight_rows(arch)}
    if arch.text.tie_word_embeddings:  # a last stage without the embedding holds a tied copy
        rows["language_model.output_layer.weight"] = rows["language_model.embedding.word_embeddings.weight"]
    offset = parallel_state.get_pipeline_model_parallel_rank() * (arch.text.num_layers // model.layout.pp)
    out = []
    for local, param in model.named_parameters():
        name = canonical_name(global_name(local, offset))
        if name not in rows:
            raise KeyError(f"parameter {local!r} (global {name!r}) has no row in the Qwen2.5-VL weight map")
        out.append((local, param, rows[name]))
    return out


def hf_shard(ckpt: HFCheckpoint, local: str, param: torch.Tensor, row: WeightRow, arch: Qwen25VLArch) -> torch.Tensor:
    """This rank's TP shard of parameter `local`, built from its HF tensors, in the parameter's dtype."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    full = to_mcore(row, [ckpt.get(h) for h in row.hf], arch)
    shard = tp_shard(full, dim=row.tp_dim, parts=row.tp_parts, tp=tp, rank=rank)
    if shard.shape != param.shape:
        raise ValueError(
            f"{ckpt.path}: {', '.join(row.hf)} -> {local}: shard shape {tuple(shard.shape)} "
            f"!= parameter shape {tuple(param.shape)} (tp={tp})"
        )
    return shard.to(param.dtype)


@torch.no_grad()
def load_hf_weights(model: Qwen25VLModel, hf_dir: str | Path | HFCheckpoint, *, progress: bool = False) -> int:
    """Copy this rank's shard of every parameter from the HF checkpoint; return how many."""
    from tqdm import tqdm

    ckpt = hf_dir if isinstance(hf_dir, HFCheckpoint) else HFCheckpoint(hf_dir, rename=hub_name)
    n = 0
    for local, param, row in tqdm(rows_for_model(model), desc="load", unit="tensor", disable=not progress):
        param.copy_(hf_shard(ckpt, local, param, row, model.arch))
        n += 1
    return n
