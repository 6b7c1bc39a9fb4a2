"""A torch RMSNorm/LayerNorm that Megatron-Core's local spec can use with sequence parallelism.

Owns: ``SequenceParallelTorchNorm`` (drop-in for ``WrappedTorchNorm``, which asserts
``not config.sequence_parallel``) and ``block_spec_with_sp_norms`` that swaps it into a layer spec.

Why it is correct: under sequence parallelism each TP rank normalises a different slice of the
sequence with the same replicated weights, so the weight gradients are partial sums over the
sequence. Tagging the parameters ``sequence_parallel=True`` makes Megatron's
``finalize_model_grads`` all-reduce them over the TP group, exactly as it does for TE's norms.

Does not own: fused norms (apex/TE) — on GPU the TE spec is used instead.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig


class SequenceParallelTorchNorm:
    """Factory with WrappedTorchNorm's signature returning a torch norm with tagged parameters."""

    def __new__(  # type: ignore[misc]
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        if config.layernorm_zero_centered_gamma:
            raise ValueError("SequenceParallelTorchNorm: layernorm_zero_centered_gamma is not supported")
        norm: torch.nn.Module
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ValueError(f"SequenceParallelTorchNorm: unsupported normalization {config.normalization!r}")
        for p in norm.parameters():
            p.sequence_parallel = config.sequence_parallel  # type: ignore[attr-defined]
        return norm


def block_spec_with_sp_norms(layer_spec: ModuleSpec, num_layers: int) -> TransformerBlockSubmodules:
    """A block of `num_layers` copies of `layer_spec` whose norms (and final norm) support SP."""
    sub = layer_spec.submodules
    replaced = {
        name: SequenceParallelTorchNorm
        for name in ("input_layernorm", "pre_mlp_layernorm", "pre_cross_attn_layernorm")
        if getattr(sub, name, IdentityOp) is not IdentityOp
    }
    layer = ModuleSpec(
        module=layer_spec.module,
        params=layer_spec.params,
        submodules=dataclasses.replace(sub, **replaced),  # type: ignore[type-var]
    )
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=SequenceParallelTorchNorm)
