"""``Qwen25VLModel``: Qwen2.5-VL on Megatron-Core, for any TP / PP / CP / SP layout.

Owns: composing the vision tower (first pipeline stage only) with the decoder (a Megatron-Core
``GPTModel`` with multimodal RoPE), the fusion of merged vision features into the placeholder
token embeddings, and the sequence bookkeeping of the parallel layouts: full-sequence embeddings
are fused, then sliced for context parallelism (load-balanced ``2*cp`` chunks) and scattered for
sequence parallelism; 3D position ids stay full length (Megatron slices the rotary table per CP
rank). Outputs are vocab-parallel logits ``[B, S/cp, V/tp]`` on the last stage.

Does not own: losses and logprobs (the trainer computes them vocab-parallel), weight loading
(``checkpoint.load_hf``) or process groups.

Legend: ``B`` batch, ``S`` sequence, ``H`` hidden, ``V`` vocabulary, ``M`` merged vision tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule

from srpo_mcore.config import ModelConfig, ParallelConfig
from srpo_mcore.models.qwen2_5_vl.config import (
    PRESETS,
    Qwen25VLArch,
    language_transformer_config,
    vision_transformer_config,
)
from srpo_mcore.models.qwen2_5_vl.layer_specs import language_block_spec, vision_layer_spec
from srpo_mcore.models.qwen2_5_vl.rope import get_rope_index, mm_token_type_ids
from srpo_mcore.models.qwen2_5_vl.vision import VisionTower
from srpo_mcore.parallel.context import cp_slice


@dataclass(frozen=True)
class ModelLayout:
    """How this model instance is laid out (what the config's ``parallel`` section says)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    sequence_parallel: bool = False
    dtype: str = "fp32"
    transformer_impl: str = "local"
    freeze_vision: bool = False
    fp8: str = "none"
    """none | e4m3 | hybrid (Transformer Engine only; the vision tower stays in bf16)."""
    fp8_recipe: str = "tensorwise"
    fp8_bf16_edge_layers: int = 0
    init_weights: bool = True
    """Randomly initialise parameters (False when a checkpoint overwrites them anyway)."""
    recompute: str = "none"
    """none | selective | full activation recomputation of the language model."""
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    recompute_modules: tuple[str, ...] = ("core_attn",)
    fused_kernels: bool = False
    rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    attention_backend: str = "auto"

    def performance_config(self) -> dict:
        """TransformerConfig fields of the language model's recompute, fusions and attention backend."""
        from megatron.core.transformer.enums import AttnBackend

        out: dict = {}
        if self.recompute == "selective":
            out.update(recompute_granularity="selective", recompute_modules=list(self.recompute_modules))
        elif self.recompute == "full":
            out.update(
                recompute_granularity="full",
                recompute_method=self.recompute_method,
                recompute_num_layers=self.recompute_num_layers,
            )
        if self.fused_kernels:
            out.update(bias_activation_fusion=True, bias_dropout_fusion=True, masked_softmax_fusion=True)
        if self.rope_fusion:
            out["apply_rope_fusion"] = True
        if self.gradient_accumulation_fusion:
            out["gradient_accumulation_fusion"] = True
        if self.transformer_impl == "transformer_engine":  # the local spec has its own attention
            out["attention_backend"] = AttnBackend[self.attention_backend]
        return out

    def fp8_config(self) -> dict:
        """TransformerConfig fields for the decoder's FP8 settings."""
        if self.fp8 == "none":
            return {}
        if self.transformer_impl != "transformer_engine":
            raise ValueError("FP8 needs transformer_impl=transformer_engine")
        edge = self.fp8_bf16_edge_layers
        return dict(
            fp8=self.fp8,
            fp8_recipe=self.fp8_recipe,
            first_last_layers_bf16=edge > 0,
            num_layers_at_start_in_bf16=edge,
            num_layers_at_end_in_bf16=edge,
        )


def layout_from_config(model: ModelConfig, parallel: ParallelConfig) -> ModelLayout:
    """The model layout a run's ``model`` and ``parallel`` sections describe."""
    if parallel.vpp not in (None, 1):
        raise NotImplementedError(
            f"parallel.vpp={parallel.vpp}: virtual pipeline stages are not implemented for Qwen2.5-VL yet; "
            "use parallel.vpp=null"
        )
    same = {f.name: getattr(model, f.name) for f in fields(ModelLayout) if hasattr(model, f.name)}
    same["recompute_modules"] = tuple(model.recompute_modules)
    return ModelLayout(
        tp=parallel.tp, pp=parallel.pp, cp=parallel.cp, sequence_parallel=parallel.sequence_parallel, **same
    )


def arch_from_config(model: ModelConfig) -> Qwen25VLArch:
    """The architecture of ``model.hf_dir``'s config.json, else of ``model.preset``."""
    if model.hf_dir:
        return Qwen25VLArch.from_hf(model.hf_dir)
    if model.preset != "none":
        return PRESETS[model.preset]
    raise ValueError("model.hf_dir or model.preset must be set to build Qwen2.5-VL")


class Qwen25VLModel(MegatronModule):
    """Qwen2.5-VL for this rank's pipeline stage. Requires ``parallel.setup.init_parallel``."""

    def __init__(self, arch: Qwen25VLArch, layout: ModelLayout) -> None:
        lm_config = language_transformer_config(
            arch,
            tp=layout.tp,
            pp=layout.pp,
            cp=layout.cp,
            sp=layout.sequence_parallel,
            dtype=layout.dtype,
            perform_initialization=layout.init_weights,
            **layout.fp8_config(),
            **layout.performance_config(),
        )
        super().__init__(lm_config)
        self.arch = arch
        self.layout = layout
        self.model_type = ModelType.encoder_or_decoder  # what Megatron's pipeline schedules look for
        self.pre_process = parallel_state.is_pipeline_first_stage()
        self.post_process = parallel_state.is_pipeline_last_stage()
        if 2 * sum(arch.text.mrope_section) != arch.text.head_dim:
            raise ValueError(
                f"mrope_section {list(arch.text.mrope_section)} must sum to head_dim/2 = {arch.text.head_dim // 2}"
            )
        if arch.text.vocab_size % layout.tp:
            raise ValueError(f"vocab_size {arch.text.vocab_size} is not divisible by tp={layout.tp}")
        self.language_model = GPTModel(
            config=lm_config,
            transformer_layer_spec=language_block_spec(layout.transformer_impl, arch.text.num_layers // layout.pp),
            vocab_size=arch.text.vocab_size,
            max_sequence_length=arch.text.max_position_embeddings,
            pre_process=self.pre_process,
            post_process=self.post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=arch.text.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=int(arch.text.rope_theta),
        )
        self.vision: VisionTower | None = None
        if self.pre_process:
            # Fusion needs the full-sequence embedding; we scatter for SP ourselves after fusing.
            self.language_model.embedding.word_embeddings.reduce_scatter_embeddings = False
            vcfg = vision_transformer_config(
                arch, tp=layout.tp, dtype=layout.dtype, perform_initialization=layout.init_weights
            )
            self.vision = VisionTower(
                vcfg, arch.vision, vision_layer_spec(layout.transformer_impl), packed=layout.transformer_impl != "local"
            )
            if layout.freeze_vision:
                self.vision.requires_grad_(False)

    # Megatron's finalize_model_grads reduces tied embedding grads through these two names.
    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self) -> torch.Tensor:
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor: torch.Tensor | list[torch.Tensor]) -> None:
        """Pipeline schedules hand the previous stage's activations here."""
        if isinstance(input_tensor, list):
            input_tensor = input_tensor[0]
        self.language_model.set_input_tensor(input_tensor)

    def position_ids(
        self,
        input_ids_BS: torch.Tensor,
        attention_mask_BS: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """3D position ids ``[3, B, S]`` of a batch (exactly HF's ``get_rope_index``)."""
        a = self.arch
        types = mm_token_type_ids(input_ids_BS, a.image_token_id, a.video_token_id)
        pos, _ = get_rope_index(
            input_ids_BS,
            types,
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
            attention_mask_BS,
            spatial_merge_size=a.vision.spatial_merge_size,
            tokens_per_second=a.vision.tokens_per_second,
        )
        return pos

    def _embed(
        self,
        input_ids_BS: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
        placeholder_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb_BSH = self.language_model.embedding.word_embeddings(input_ids_BS)
        assert self.vision is not None
        for pixels, grid, token, kind in (
            (pixel_values, image_grid_thw, self.arch.image_token_id, "image"),
            (pixel_values_videos, video_grid_thw, self.arch.video_token_id, "video"),
        ):
            if pixels is None:
                continue
            if grid is None:
                raise ValueError(f"{kind} pixels given without {kind}_grid_thw")
            # A frozen tower (and merger) needs no autograd graph: its features enter as constants.
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.layout.freeze_vision):
                feats_MH = self.vision(pixels, grid).to(emb_BSH.dtype)
            mask_BS = input_ids_BS == token
            if placeholder_mask_BS is not None:
                mask_BS = mask_BS & placeholder_mask_BS
            if int(mask_BS.sum()) != feats_MH.shape[0]:
                raise ValueError(
                    f"{int(mask_BS.sum())} {kind} placeholder tokens but the vision tower produced "
                    f"{feats_MH.shape[0]} {kind} features (grid {grid.tolist()})"
                )
            emb_BSH = emb_BSH.masked_scatter(mask_BS.unsqueeze(-1), feats_MH)
        emb_SBH = emb_BSH.transpose(0, 1).contiguous()
        cp = self.layout.cp
        if cp > 1:
            emb_SBH = cp_slice(emb_SBH, 0, cp, parallel_state.get_context_parallel_rank())
        if self.layout.sequence_parallel:
            emb_SBH = tensor_parallel.scatter_to_sequence_parallel_region(emb_SBH)
        return emb_SBH

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        placeholder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, S/cp, V/tp]`` on the last stage; hidden states ``[S/cp (/tp with SP), B, H]`` otherwise.

        Args:
            input_ids: ``[B, S]`` full sequences (every stage needs them for the position ids).
            position_ids: ``[3, B, S]``; computed from `input_ids` and the grids when None.
            attention_mask: ``[B, S]`` with 1 for real tokens, 0 for padding; None = no padding.
            pixel_values / image_grid_thw / pixel_values_videos / video_grid_thw / second_per_grid_ts:
                as the HF processor returns them.
            placeholder_mask: ``[B, S]`` bool, True where an image/video token takes vision features;
                None = every such token. Generated responses may contain a placeholder token id,
                which (as in vLLM's decoding) is then an ordinary text token; callers pass
                `position_ids` computed from the prompt alone in that case.
        """
        if position_ids is None:
            position_ids = self.position_ids(
                input_ids, attention_mask, image_grid_thw, video_grid_thw, second_per_grid_ts
            )
        decoder_input = None
        if self.pre_process:
            decoder_input = self._embed(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, placeholder_mask
            )
        mask = None
        if attention_mask is not None:
            S = input_ids.shape[1]
            causal = torch.ones(S, S, dtype=torch.bool, device=input_ids.device).triu(1)
            mask = causal[None, None] | ~attention_mask.bool()[:, None, None, :]
        return self.language_model(
            input_ids=None,
            position_ids=position_ids,
            attention_mask=mask,
            decoder_input=decoder_input,
        )
