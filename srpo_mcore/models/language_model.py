"""The Qwen2-style language model as a Megatron-Core ``GPTModel``.

Owns: turning a ``ModelConfig`` + ``ParallelConfig`` into a ``TransformerConfig`` (RMSNorm, SwiGLU,
GQA with QKV bias, no other biases, RoPE) and building the ``GPTModel`` with the local layer spec
(CPU or GPU without Transformer Engine) for this rank's pipeline stage.

Does not own: the vision tower, multimodal RoPE position ids or HF weight loading (issue #3/#4 build
Qwen2.5-VL on top of this), nor process-group setup (``srpo_mcore.parallel.setup``).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.transformer_config import TransformerConfig

from srpo_mcore._compat.sp_norm import block_spec_with_sp_norms
from srpo_mcore.config import ModelConfig, ParallelConfig
from srpo_mcore.models.qwen2_5_vl.config import common_transformer_kwargs


def transformer_config(model: ModelConfig, parallel: ParallelConfig) -> TransformerConfig:
    """Megatron-Core TransformerConfig of a Qwen2-style decoder for this layout."""
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.hidden_size // model.num_attention_heads,
        layernorm_epsilon=1e-6,
        add_bias_linear=False,
        add_qkv_bias=True,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sequence_parallel,
        init_method_std=0.02,
        **common_transformer_kwargs(model.dtype, not torch.cuda.is_available()),
    )


def build_language_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    tie_embeddings: bool = False,
    rotary_base: float = 1_000_000.0,
) -> GPTModel:
    """Build this rank's stage of the decoder. Requires ``init_parallel`` to have run.

    Returns a GPTModel whose output logits are vocab-parallel ([b, s, vocab/tp]); compute losses
    and logprobs vocab-parallel rather than gathering the full vocabulary.
    """
    if model.transformer_impl != "local":
        raise NotImplementedError(
            "model.transformer_impl=transformer_engine is built by the Qwen2.5-VL model (issue #3); "
            "this builder provides the local spec"
        )
    config = transformer_config(model, parallel)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer_spec = block_spec_with_sp_norms(spec, _layers_on_this_stage(model.num_layers, parallel.pp))
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=model.vocab_size,
        max_sequence_length=model.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(rotary_base),
    )


def _layers_on_this_stage(num_layers: int, pp: int) -> int:
    return num_layers // pp
