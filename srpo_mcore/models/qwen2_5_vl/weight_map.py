"""THE weight map of Qwen2.5-VL: HF checkpoint names <-> Megatron-Core parameter names.

Every path that moves weights uses this table in both directions: loading an HF checkpoint into
the trainer, offline conversion (tools/convert_*), and live refit into vLLM. One declarative row
per Megatron parameter says which HF tensors it is made of, how (``kind``), and how it is split
across tensor-parallel ranks (``tp_dim``/``tp_parts``).

Names are global (layer ``i`` counts from the first layer of the whole model); a pipeline stage
adds its layer offset to its local module names (see ``global_name``).

HF names are the hub's layout (``model.layers.*``, ``visual.*``, ``lm_head.*``), which every export
writes. Checkpoints saved in the layout transformers uses internally since 4.52
(``model.language_model.*``, ``model.visual.*``) are read through ``hub_name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from srpo_mcore.checkpoint import transforms as T
from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch

KINDS = ("copy", "qkv", "vision_qkv", "gate_up", "conv3d")

TRANSFORMERS_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))
"""transformers' internal Qwen2.5-VL tensor-name prefixes -> the hub layout's."""


def hub_name(name: str) -> str:
    """An HF tensor name in the hub layout, whichever of the two HF layouts it is written in."""
    for internal, hub in TRANSFORMERS_PREFIXES:
        if name.startswith(internal):
            return hub + name[len(internal) :]
    return name


@dataclass(frozen=True)
class WeightRow:
    """One Megatron parameter and the HF tensors it is made of."""

    mcore: str
    hf: tuple[str, ...]
    kind: str = "copy"
    tp_dim: int | None = None
    """Tensor-parallel partition dimension of the Megatron tensor (None: replicated)."""
    tp_parts: int = 1
    """Blocks sharded independently along ``tp_dim`` (2 for SwiGLU ``[gate; up]``)."""


def _text_layer(i: int) -> list[WeightRow]:
    m, h = f"language_model.decoder.layers.{i}", f"model.layers.{i}"
    a = f"{h}.self_attn"
    return [
        WeightRow(f"{m}.input_layernorm.weight", (f"{h}.input_layernorm.weight",)),
        WeightRow(
            f"{m}.self_attention.linear_qkv.weight",
            (f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"),
            "qkv",
            0,
        ),
        WeightRow(
            f"{m}.self_attention.linear_qkv.bias",
            (f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"),
            "qkv",
            0,
        ),
        WeightRow(f"{m}.self_attention.linear_proj.weight", (f"{a}.o_proj.weight",), "copy", 1),
        WeightRow(f"{m}.pre_mlp_layernorm.weight", (f"{h}.post_attention_layernorm.weight",)),
        WeightRow(
            f"{m}.mlp.linear_fc1.weight", (f"{h}.mlp.gate_proj.weight", f"{h}.mlp.up_proj.weight"), "gate_up", 0, 2
        ),
        WeightRow(f"{m}.mlp.linear_fc2.weight", (f"{h}.mlp.down_proj.weight",), "copy", 1),
    ]


def _vision_layer(i: int) -> list[WeightRow]:
    m, h = f"vision.layers.{i}", f"visual.blocks.{i}"
    return [
        WeightRow(f"{m}.input_layernorm.weight", (f"{h}.norm1.weight",)),
        WeightRow(f"{m}.self_attention.linear_qkv.weight", (f"{h}.attn.qkv.weight",), "vision_qkv", 0),
        WeightRow(f"{m}.self_attention.linear_qkv.bias", (f"{h}.attn.qkv.bias",), "vision_qkv", 0),
        WeightRow(f"{m}.self_attention.linear_proj.weight", (f"{h}.attn.proj.weight",), "copy", 1),
        WeightRow(f"{m}.self_attention.linear_proj.bias", (f"{h}.attn.proj.bias",)),
        WeightRow(f"{m}.pre_mlp_layernorm.weight", (f"{h}.norm2.weight",)),
        WeightRow(
            f"{m}.mlp.linear_fc1.weight", (f"{h}.mlp.gate_proj.weight", f"{h}.mlp.up_proj.weight"), "gate_up", 0, 2
        ),
        WeightRow(f"{m}.mlp.linear_fc1.bias", (f"{h}.mlp.gate_proj.bias", f"{h}.mlp.up_proj.bias"), "gate_up", 0, 2),
        WeightRow(f"{m}.mlp.linear_fc2.weight", (f"{h}.mlp.down_proj.weight",), "copy", 1),
        WeightRow(f"{m}.mlp.linear_fc2.bias", (f"{h}.mlp.down_proj.bias",)),
    ]


def weight_rows(arch: Qwen25VLArch) -> list[WeightRow]:
    """Every Megatron parameter of the full model (all stages), in a stable order."""
    rows = [WeightRow("language_model.embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "copy", 0)]
    for i in range(arch.text.num_layers):
        rows += _text_layer(i)
    rows.append(WeightRow("language_model.decoder.final_layernorm.weight", ("model.norm.weight",)))
    if not arch.text.tie_word_embeddings:
        rows.append(WeightRow("language_model.output_layer.weight", ("lm_head.weight",), "copy", 0))
    rows.append(WeightRow("vision.patch_embed.weight", ("visual.patch_embed.proj.weight",), "conv3d", 0))
    for i in range(arch.vision.depth):
        rows += _vision_layer(i)
    rows += [
        WeightRow("vision.merger.ln_q.weight", ("visual.merger.ln_q.weight",)),
        WeightRow("vision.merger.fc1.weight", ("visual.merger.mlp.0.weight",), "copy", 0),
        WeightRow("vision.merger.fc1.bias", ("visual.merger.mlp.0.bias",), "copy", 0),
        WeightRow("vision.merger.fc2.weight", ("visual.merger.mlp.2.weight",), "copy", 1),
        WeightRow("vision.merger.fc2.bias", ("visual.merger.mlp.2.bias",)),
    ]
    return rows


def to_mcore(row: WeightRow, hf: list[torch.Tensor], arch: Qwen25VLArch) -> torch.Tensor:
    """The full (unsharded) Megatron tensor of `row` from its HF tensors."""
    if row.kind == "copy":
        return hf[0]
    if row.kind == "qkv":
        return T.fuse_qkv(*hf, num_query_groups=arch.text.num_query_groups, head_dim=arch.text.head_dim)
    if row.kind == "vision_qkv":
        return T.stacked_qkv_to_megatron(hf[0], num_heads=arch.vision.num_heads, head_dim=arch.vision.head_dim)
    if row.kind == "gate_up":
        return T.fuse_gate_up(*hf)
    if row.kind == "conv3d":
        return T.conv3d_to_linear(hf[0])
    raise ValueError(f"unknown weight-map kind {row.kind!r}")


def to_hf(row: WeightRow, full: torch.Tensor, arch: Qwen25VLArch) -> list[tuple[str, torch.Tensor]]:
    """The HF tensors of `row` from its full Megatron tensor (inverse of `to_mcore`)."""
    if row.kind == "copy":
        parts: tuple[torch.Tensor, ...] = (full,)
    elif row.kind == "qkv":
        t = arch.text
        parts = T.split_qkv(
            full, num_query_groups=t.num_query_groups, num_heads=t.num_attention_heads, head_dim=t.head_dim
        )
    elif row.kind == "vision_qkv":
        parts = (T.megatron_to_stacked_qkv(full, num_heads=arch.vision.num_heads, head_dim=arch.vision.head_dim),)
    elif row.kind == "gate_up":
        parts = T.split_gate_up(full)
    elif row.kind == "conv3d":
        v = arch.vision
        parts = (
            T.linear_to_conv3d(
                full, in_channels=v.in_channels, temporal_patch_size=v.temporal_patch_size, patch_size=v.patch_size
            ),
        )
    else:
        raise ValueError(f"unknown weight-map kind {row.kind!r}")
    return list(zip(row.hf, parts))


def hf_byte_ranges(
    row: WeightRow, shape: tuple[int, ...], dtype: torch.dtype, arch: Qwen25VLArch
) -> list[tuple[str, int, int, tuple[int, ...]]] | None:
    """Where each HF tensor of `row` lies in the full Megatron tensor's bytes: (HF name, first
    byte, bytes, HF shape), when every one of them is a contiguous run of those bytes ("copy" rows,
    the two halves of a SwiGLU fc1, the patch embedding); None when the row rearranges them (QKV).

    Found by running `to_hf` on a meta tensor: no memory is touched.
    """
    full = torch.empty(shape, dtype=dtype, device="meta")
    size = full.element_size()
    out = []
    for name, t in to_hf(row, full, arch):
        if not (t is full or t._base is full) or not t.is_contiguous():
            return None
        out.append((name, t.storage_offset() * size, t.numel() * size, tuple(t.shape)))
    return out


# Transformer Engine fuses the pre-attention/pre-MLP norms into the following linear layers.
_TE_NORMS = {
    ".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
    ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight",
}


def canonical_name(name: str) -> str:
    """The weight-map name of a parameter, whether it comes from the local or the TE spec."""
    for te, local in _TE_NORMS.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


_TEXT_LAYER = re.compile(r"^(language_model\.decoder\.layers\.)(\d+)(\..*)$")


def global_name(local_name: str, layer_offset: int) -> str:
    """A stage-local Megatron parameter name with its text-layer index made global."""
    m = _TEXT_LAYER.match(local_name)
    return f"{m.group(1)}{int(m.group(2)) + layer_offset}{m.group(3)}" if m else local_name
