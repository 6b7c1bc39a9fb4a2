"""Qwen2.5-VL architecture: HF config <-> our dataclasses <-> Megatron ``TransformerConfig``.

Owns: ``Qwen25VLArch`` (text + vision shapes and special token ids), reading it from an HF
``config.json``/``Qwen2_5_VLConfig``, writing it back as ``Qwen2_5_VLConfig``, the 3B/7B/32B/72B
presets (values of the released ``config.json`` files), and the ``TransformerConfig`` of the
language model and of the vision tower for a parallel layout.

Does not own: building modules (``model``, ``vision``) or layer specs (``layer_specs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TextArch:
    """The Qwen2 decoder."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    tie_word_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class VisionArch:
    """The Qwen2.5-VL vision transformer and patch merger."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 3584
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Flattened size of one patch: channels x temporal x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class Qwen25VLArch:
    """Everything that fixes the function a Qwen2.5-VL checkpoint computes."""

    text: TextArch
    vision: VisionArch = field(default_factory=VisionArch)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any] | Any) -> Qwen25VLArch:
        """From an HF checkpoint directory, a ``config.json`` path, a dict or a ``Qwen2_5_VLConfig``."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            path = path / "config.json" if path.is_dir() else path
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: cannot read a Qwen2.5-VL config.json: {e}") from e
        elif isinstance(source, dict):
            data = source
        else:
            data = source.to_dict()
        if data.get("model_type") not in ("qwen2_5_vl", None):
            raise ValueError(f"model_type {data.get('model_type')!r} is not qwen2_5_vl")
        t = data.get("text_config") or data
        v = data["vision_config"]
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        theta = rope.get("rope_theta", t.get("rope_theta", 1_000_000.0))
        vrope = v.get("rope_parameters") or {}
        text = TextArch(
            num_layers=t["num_hidden_layers"],
            hidden_size=t["hidden_size"],
            ffn_hidden_size=t["intermediate_size"],
            num_attention_heads=t["num_attention_heads"],
            num_query_groups=t.get("num_key_value_heads") or t["num_attention_heads"],
            vocab_size=t["vocab_size"],
            tie_word_embeddings=bool(data.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
            rope_theta=float(theta),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),  # type: ignore[arg-type]
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            max_position_embeddings=t.get("max_position_embeddings", 128000),
        )
        if v.get("hidden_act", "silu") != "silu":
            raise ValueError(f"vision_config.hidden_act {v.get('hidden_act')!r}: only silu is supported")
        vision = VisionArch(
            depth=v["depth"],
            hidden_size=v["hidden_size"],
            intermediate_size=v["intermediate_size"],
            num_heads=v["num_heads"],
            out_hidden_size=v["out_hidden_size"],
            in_channels=v.get("in_channels", v.get("in_chans", 3)),
            patch_size=v.get("patch_size", 14),
            temporal_patch_size=v.get("temporal_patch_size", 2),
            spatial_merge_size=v.get("spatial_merge_size", 2),
            window_size=v.get("window_size", 112),
            fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
            tokens_per_second=v.get("tokens_per_second", 2),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
        )
        return cls(
            text=text,
            vision=vision,
            image_token_id=data.get("image_token_id", 151655),
            video_token_id=data.get("video_token_id", 151656),
            vision_start_token_id=data.get("vision_start_token_id", 151652),
            vision_end_token_id=data.get("vision_end_token_id", 151653),
        )

    def to_hf(self) -> Any:
        """The equivalent ``transformers.Qwen2_5_VLConfig``."""
        from transformers import Qwen2_5_VLConfig

        t, v = self.text, self.vision
        return Qwen2_5_VLConfig(
            text_config=dict(
                num_hidden_layers=t.num_layers,
                hidden_size=t.hidden_size,
                intermediate_size=t.ffn_hidden_size,
                num_attention_heads=t.num_attention_heads,
                num_key_value_heads=t.num_query_groups,
                vocab_size=t.vocab_size,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": list(t.mrope_section),
                },
                rms_norm_eps=t.rms_norm_eps,
                max_position_embeddings=t.max_position_embeddings,
                tie_word_embeddings=t.tie_word_embeddings,
            ),
            vision_config=dict(
                depth=v.depth,
                hidden_size=v.hidden_size,
                intermediate_size=v.intermediate_size,
                num_heads=v.num_heads,
                out_hidden_size=v.out_hidden_size,
                in_channels=v.in_channels,
                patch_size=v.patch_size,
                temporal_patch_size=v.temporal_patch_size,
                spatial_merge_size=v.spatial_merge_size,
                window_size=v.window_size,
                fullatt_block_indexes=list(v.fullatt_block_indexes),
                tokens_per_second=v.tokens_per_second,
            ),
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            vision_start_token_id=self.vision_start_token_id,
            vision_end_token_id=self.vision_end_token_id,
            tie_word_embeddings=t.tie_word_embeddings,
        )


def _preset(layers: int, hidden: int, ffn: int, heads: int, groups: int, vocab: int, tied: bool) -> Qwen25VLArch:
    text = TextArch(layers, hidden, ffn, heads, groups, vocab, tie_word_embeddings=tied)
    return Qwen25VLArch(text=text, vision=replace(VisionArch(), out_hidden_size=hidden))


# The released Qwen2.5-VL-*-Instruct config.json values.
PRESETS: dict[str, Qwen25VLArch] = {
    "3b": _preset(36, 2048, 11008, 16, 2, 151936, True),
    "7b": _preset(28, 3584, 18944, 28, 4, 152064, False),
    "32b": _preset(64, 5120, 27648, 40, 8, 152064, False),
    "72b": _preset(80, 8192, 29568, 64, 8, 152064, False),
}


def common_transformer_kwargs(dtype: str, on_cpu: bool) -> dict[str, Any]:
    """TransformerConfig fields every Qwen2-style tower shares: no dropout, no fused kernels that
    need apex/TE, RMSNorm + SwiGLU, and CPU initialisation where there is no GPU."""
    d = DTYPES[dtype]
    return dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        params_dtype=d,
        pipeline_dtype=d,
        bf16=d is torch.bfloat16,
        fp16=d is torch.float16,
        use_cpu_initialization=on_cpu,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
    )


def language_transformer_config(
    arch: Qwen25VLArch, *, tp: int = 1, pp: int = 1, cp: int = 1, sp: bool = False, dtype: str = "fp32", **extra: Any
) -> TransformerConfig:
    """TransformerConfig of the decoder: GQA with QKV bias, RMSNorm, SwiGLU, mRoPE."""
    t = arch.text
    return TransformerConfig(
        num_layers=t.num_layers,
        hidden_size=t.hidden_size,
        ffn_hidden_size=t.ffn_hidden_size,
        num_attention_heads=t.num_attention_heads,
        num_query_groups=t.num_query_groups,
        kv_channels=t.head_dim,
        layernorm_epsilon=t.rms_norm_eps,
        add_bias_linear=False,
        add_qkv_bias=True,
        mrope_section=list(t.mrope_section),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        sequence_parallel=sp,
        **{**common_transformer_kwargs(dtype, not torch.cuda.is_available()), **extra},  # extra may turn fusions on
    )


def vision_transformer_config(
    arch: Qwen25VLArch, *, tp: int = 1, dtype: str = "fp32", **extra: Any
) -> TransformerConfig:
    """TransformerConfig of the vision tower: MHA with biases everywhere, RMSNorm, SwiGLU.

    The vision tower runs on the first pipeline stage, without pipeline, context or sequence
    parallelism: its tokens are replicated across the TP group and its weights sharded.
    """
    v = arch.vision
    return TransformerConfig(
        num_layers=v.depth,
        hidden_size=v.hidden_size,
        ffn_hidden_size=v.intermediate_size,
        num_attention_heads=v.num_heads,
        num_query_groups=v.num_heads,
        kv_channels=v.head_dim,
        layernorm_epsilon=v.rms_norm_eps,
        add_bias_linear=True,
        add_qkv_bias=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        context_parallel_size=1,
        sequence_parallel=False,
        **common_transformer_kwargs(dtype, not torch.cuda.is_available()),
        **extra,
    )
