"""The Qwen2.5-VL vision tower and patch merger, built from Megatron-Core layers.

Owns: patch embedding (the Conv3d of HF, whose kernel equals its stride, as one linear map over
the flattened ``C x T x P x P`` patch), the 2D rotary embedding, the window reordering of
Qwen2.5-VL (tokens grouped into windows of ``window_size`` pixels, 2x2 merge units kept together),
window attention on most layers and full (per-frame) attention on ``fullatt_block_indexes``, and
the 2x2 patch merger (RMSNorm, MLP with GELU) into the language model's width. The transformer
layers are Megatron-Core ``TransformerLayer``s; the QKV/MLP/merger linears are tensor-parallel.

Attention segments are expressed as a block-diagonal boolean mask for the local spec, or as packed
``cu_seqlens`` (THD) for Transformer Engine.

Legend: ``N`` patches (before merging), ``M`` merged tokens (N / 4), ``n`` images/videos,
``D`` vision width, ``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from srpo_mcore.models.qwen2_5_vl.config import VisionArch


def vision_position_ids(grid_thw_n3: torch.Tensor, merge: int) -> torch.Tensor:
    """(h, w) patch coordinates ``[N, 2]`` in the processor's block-major (2x2 merge unit) order."""
    out = []
    for t, h, w in grid_thw_n3.tolist():
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(shape).transpose(1, 2).flatten()
        ww = ww.reshape(shape).transpose(1, 2).flatten()
        out.append(torch.stack([hh, ww], dim=-1).repeat(t, 1))
    return torch.cat(out, dim=0)


def frame_cu_seqlens(grid_thw_n3: torch.Tensor) -> torch.Tensor:
    """Segment boundaries of full attention: every frame of every image/video is one segment."""
    lens = torch.repeat_interleave(grid_thw_n3[:, 1] * grid_thw_n3[:, 2], grid_thw_n3[:, 0])
    return F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))


def window_index(
    grid_thw_n3: torch.Tensor, merge: int, window_size: int, patch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reordering of merge units into windows, and the window segment boundaries (in patches)."""
    win = window_size // merge // patch_size
    unit = merge * merge
    index, cu = [], [0]
    offset = 0
    for t, h, w in grid_thw_n3.tolist():
        gh, gw = h // merge, w // merge
        idx = torch.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = win - gh % win, win - gw % win
        nh, nw = (gh + ph) // win, (gw + pw) // win
        padded = F.pad(idx, (0, pw, 0, ph), value=-100).reshape(t, nh, win, nw, win)
        padded = padded.permute(0, 1, 3, 2, 4).reshape(t, nh * nw, win, win)
        seqlens = (padded != -100).sum([2, 3]).reshape(-1)
        flat = padded.reshape(-1)
        index.append(flat[flat != -100] + offset)
        cu.extend((seqlens.cumsum(0) * unit + cu[-1]).tolist())
        offset += t * gh * gw
    return torch.cat(index), torch.unique_consecutive(torch.tensor(cu, dtype=torch.int32))


def segment_mask(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean ``[1, 1, n, n]`` mask, True where attention is *not* allowed (different segments)."""
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), (cu_seqlens[1:] - cu_seqlens[:-1]).long())
    return (seg[:, None] != seg[None, :]).view(1, 1, n, n)


class VisionRotary(torch.nn.Module):
    """2D rotary embedding: the first half of each head rotates with h, the second with w."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        quarter = head_dim // 2
        self.register_buffer(
            "inv_freq", 1.0 / theta ** (torch.arange(0, quarter, 2, dtype=torch.float) / quarter), persistent=False
        )

    def forward(self, pos_N2: torch.Tensor) -> torch.Tensor:
        """Rotary angles ``[N, 1, 1, d]`` in Megatron's (non-interleaved) layout."""
        freqs = pos_N2[..., None].float() * self.inv_freq.to(pos_N2.device)  # [N, 2, d/4]
        half = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)  # [N, d/2]
        return torch.cat([half, half], dim=-1)[:, None, None, :]


class PatchMerger(MegatronModule):
    """RMSNorm, then 2x2 neighbouring patches concatenated and projected by a TP-parallel MLP."""

    def __init__(self, config: TransformerConfig, arch: VisionArch) -> None:
        super().__init__(config)
        self.unit_dim = arch.hidden_size * arch.spatial_merge_size**2
        self.ln_q = torch.nn.RMSNorm(arch.hidden_size, eps=1e-6, dtype=config.params_dtype)
        self.fc1 = tensor_parallel.ColumnParallelLinear(
            self.unit_dim, self.unit_dim, config=config, init_method=config.init_method, bias=True, gather_output=False
        )
        self.fc2 = tensor_parallel.RowParallelLinear(
            self.unit_dim,
            arch.out_hidden_size,
            config=config,
            init_method=config.output_layer_init_method,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        x = self.ln_q(x_ND).view(-1, self.unit_dim)
        x, _ = self.fc1(x)
        x, _ = self.fc2(F.gelu(x))
        return x


class VisionTower(MegatronModule):
    """Qwen2.5-VL vision transformer + merger on Megatron-Core.

    Args:
        config: The vision ``TransformerConfig`` (see ``config.vision_transformer_config``).
        arch: Vision architecture.
        layer_spec: Spec of one vision ``TransformerLayer`` (``layer_specs.vision_layer_spec``).
        packed: Use packed ``cu_seqlens`` (Transformer Engine) instead of boolean masks.
    """

    def __init__(
        self, config: TransformerConfig, arch: VisionArch, layer_spec: ModuleSpec, *, packed: bool = False
    ) -> None:
        super().__init__(config)
        self.arch = arch
        self.packed = packed
        # Column-parallel with gathered output: the largest vision weight is sharded too.
        self.patch_embed = tensor_parallel.ColumnParallelLinear(
            arch.patch_dim,
            arch.hidden_size,
            config=config,
            init_method=config.init_method,
            bias=False,
            gather_output=True,
        )
        self.rotary = VisionRotary(arch.head_dim, arch.rope_theta)
        self.layers = torch.nn.ModuleList(
            [build_module(layer_spec, config=config, layer_number=i + 1) for i in range(arch.depth)]
        )
        self.merger = PatchMerger(config, arch)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        """Distributed-checkpoint view: each layer keeps its tensor-parallel sharding (a plain
        ModuleList would be saved as replicated tensors)."""
        out: dict = {}
        for name, child in self.named_children():
            if name == "layers":
                for i, layer in enumerate(self.layers):
                    out.update(layer.sharded_state_dict(f"{prefix}layers.{i}.", sharded_offsets, metadata))
            elif isinstance(child, MegatronModule) or hasattr(child, "sharded_state_dict"):
                out.update(child.sharded_state_dict(f"{prefix}{name}.", sharded_offsets, metadata))
            else:
                from megatron.core.transformer.utils import sharded_state_dict_default

                out.update(sharded_state_dict_default(child, f"{prefix}{name}.", sharded_offsets, metadata))
        return out

    def forward(self, pixel_values_NP: torch.Tensor, grid_thw_n3: torch.Tensor) -> torch.Tensor:
        """Merged vision features ``[M, out_hidden_size]`` in the processor's token order."""
        a = self.arch
        unit = a.spatial_merge_size**2
        grid = grid_thw_n3.cpu()
        order, cu_window = window_index(grid, a.spatial_merge_size, a.window_size, a.patch_size)
        cu_full = frame_cu_seqlens(grid)
        x, _ = self.patch_embed(pixel_values_NP.to(self.patch_embed.weight.dtype))
        n = x.shape[0]
        order = order.to(x.device)
        x = x.view(n // unit, unit, -1)[order].reshape(n, -1)
        rope = self.rotary(vision_position_ids(grid, a.spatial_merge_size).to(x.device))
        rope = rope.view(n // unit, unit, *rope.shape[1:])[order].reshape(rope.shape)
        seg = {"full": cu_full, "window": cu_window}
        hidden = x.unsqueeze(1)  # [N, 1, D]: Megatron's [s, b, h]
        for i, layer in enumerate(self.layers):
            cu = seg["full" if i in a.fullatt_block_indexes else "window"]
            if self.packed:
                cu_dev = cu.to(x.device)
                maxlen = int((cu[1:] - cu[:-1]).max())
                params = PackedSeqParams(
                    qkv_format="thd",
                    cu_seqlens_q=cu_dev,
                    cu_seqlens_kv=cu_dev,
                    max_seqlen_q=maxlen,
                    max_seqlen_kv=maxlen,
                )
                hidden, _ = layer(hidden, attention_mask=None, rotary_pos_emb=rope, packed_seq_params=params)
            else:
                hidden, _ = layer(hidden, attention_mask=segment_mask(cu, n).to(x.device), rotary_pos_emb=rope)
        merged = self.merger(hidden.squeeze(1))
        return merged[torch.argsort(order)]
