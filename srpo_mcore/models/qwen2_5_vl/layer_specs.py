"""Layer specs of Qwen2.5-VL: Megatron-Core local layers (CPU or GPU) or Transformer Engine (GPU).

Owns: the choice of implementation per tower, made explicit by ``model.transformer_impl``:
- ``local``: Megatron-Core's local layers with norms usable with sequence parallelism and
  ``attention.LocalAttention`` as core attention (PyTorch SDPA kernels, exact under context
  parallelism). The vision layers are non-causal and take a block-diagonal mask.
- ``transformer_engine``: TE layers (fused norm+linear, TE attention with its own CP and packed
  THD sequences for the vision tower); FP8 is configured on the ``TransformerConfig``.

``require_transformer_engine`` fails with a clear message when TE or a GPU is missing.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from srpo_mcore._compat.sp_norm import block_spec_with_sp_norms
from srpo_mcore.models.qwen2_5_vl.attention import LocalAttention


def require_transformer_engine() -> None:
    """Raise a clear error unless Transformer Engine can be used (CUDA + importable TE)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "model.transformer_impl=transformer_engine needs a CUDA GPU (torch.cuda.is_available() is False); "
            "use model.transformer_impl=local on CPU"
        )
    try:
        import transformer_engine  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"model.transformer_impl=transformer_engine needs Transformer Engine (NGC PyTorch containers ship it): {e}"
        ) from e


def _with_core_attention(spec: ModuleSpec, core_attention: type) -> ModuleSpec:
    sub = spec.submodules
    attn = sub.self_attention  # type: ignore[union-attr]
    new_attn = ModuleSpec(
        module=attn.module,
        params=attn.params,
        submodules=dataclasses.replace(attn.submodules, core_attention=core_attention),
    )
    return ModuleSpec(
        module=spec.module, params=spec.params, submodules=dataclasses.replace(sub, self_attention=new_attn)
    )  # type: ignore[type-var]


def language_block_spec(impl: str, num_layers: int) -> TransformerBlockSubmodules | ModuleSpec:
    """The decoder block spec for `num_layers` layers on this pipeline stage."""
    if impl == "transformer_engine":
        require_transformer_engine()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    spec = _with_core_attention(get_gpt_layer_local_spec(normalization="RMSNorm"), LocalAttention)
    return block_spec_with_sp_norms(spec, num_layers)


def vision_layer_spec(impl: str) -> ModuleSpec:
    """One vision transformer layer: non-causal attention over segments (windows or frames)."""
    if impl == "transformer_engine":
        require_transformer_engine()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec()
        mask = AttnMaskType.padding  # segments come as packed THD cu_seqlens
    else:
        local = _with_core_attention(get_gpt_layer_local_spec(normalization="RMSNorm"), LocalAttention)
        spec = block_spec_with_sp_norms(local, 1).layer_specs[0]
        mask = AttnMaskType.arbitrary
    attn = spec.submodules.self_attention  # type: ignore[union-attr]
    new_attn = ModuleSpec(
        module=attn.module, params={**attn.params, "attn_mask_type": mask}, submodules=attn.submodules
    )
    return ModuleSpec(
        module=spec.module, params=spec.params, submodules=dataclasses.replace(spec.submodules, self_attention=new_attn)
    )  # type: ignore[type-var]
