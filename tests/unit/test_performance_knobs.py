"""The performance fields (recompute, fusions, attention backend, communication overlap) land in the
Megatron-Core config they belong to, bad combinations are refused naming the fields, and GPU-only
fields are refused on a machine without CUDA instead of being ignored. (Recompute's exactness:
tests/dist/test_recompute.py; the knobs on GPU: tests/gpu/test_gpu_grpo_step.py.)"""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.enums import AttnBackend

from srpo_mcore.config import ConfigError, ModelConfig, OptimConfig, ParallelConfig, RunConfig, gpu_only_fields
from srpo_mcore.models.qwen2_5_vl.config import language_transformer_config
from srpo_mcore.models.qwen2_5_vl.model import layout_from_config
from srpo_mcore.rl.optim import ddp_config, optimizer_config
from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint


def _perf(**model) -> dict:
    return layout_from_config(ModelConfig(**model), ParallelConfig()).performance_config()


def test_defaults_change_nothing() -> None:
    assert _perf() == {}
    assert _perf(transformer_impl="transformer_engine") == {"attention_backend": AttnBackend.auto}


def test_each_knob_lands_in_transformer_config() -> None:
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch

    arch = Qwen25VLArch.from_hf(build_tiny_checkpoint("gqa"))
    full = language_transformer_config(
        arch, **_perf(recompute="full", recompute_method="block", recompute_num_layers=2, fused_kernels=True)
    )
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "block", 2)
    assert full.bias_activation_fusion and full.bias_dropout_fusion and full.masked_softmax_fusion
    sel = language_transformer_config(arch, **_perf(recompute="selective", recompute_modules=["core_attn", "mlp"]))
    assert sel.recompute_granularity == "selective" and sel.recompute_modules == ["core_attn", "mlp"]
    assert sel.recompute_method is None and not sel.bias_activation_fusion
    plain = language_transformer_config(arch, **_perf())
    assert plain.recompute_granularity is None and not plain.masked_softmax_fusion
    # Transformer Engine knobs (TransformerConfig checks TE is installed, so only their fields here)
    te = _perf(
        transformer_impl="transformer_engine",
        rope_fusion=True,
        gradient_accumulation_fusion=True,
        attention_backend="flash",
    )
    assert te == {
        "apply_rope_fusion": True,
        "gradient_accumulation_fusion": True,
        "attention_backend": AttnBackend.flash,
    }


def test_overlap_lands_in_ddp_and_optimizer_config() -> None:
    on = OptimConfig(overlap_grad_reduce=True, overlap_param_gather=True)
    d, o = ddp_config(on), optimizer_config(on, "bf16")
    assert d.overlap_grad_reduce and d.overlap_param_gather and d.use_distributed_optimizer and d.grad_reduce_in_fp32
    assert o.overlap_param_gather and o.use_distributed_optimizer and o.bf16
    off = ddp_config(OptimConfig())
    assert not off.overlap_grad_reduce and not off.overlap_param_gather
    assert not optimizer_config(OptimConfig(), "fp32").overlap_param_gather


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"recompute": "full", "recompute_num_layers": 0}}, "model.recompute_num_layers must be >= 1"),
        ({"model": {"recompute": "selective", "recompute_modules": ["moe"]}}, "model.recompute_modules must be"),
        (
            {"model": {"recompute": "selective", "recompute_modules": ["layernorm"]}},
            "layernorm needs model.transformer",
        ),
        ({"model": {"rope_fusion": True}}, "model.rope_fusion needs model.transformer_impl=transformer_engine"),
        ({"model": {"gradient_accumulation_fusion": True}}, "model.gradient_accumulation_fusion needs model.trans"),
        ({"model": {"attention_backend": "flash"}}, "model.attention_backend=flash is a Transformer Engine backend"),
        (
            {"model": {"transformer_impl": "transformer_engine", "attention_backend": "local"}},
            "attention_backend=local",
        ),
        ({"optim": {"overlap_param_gather": True}}, "optim.overlap_param_gather needs optim.overlap_grad_reduce"),
        (
            {"optim": {"overlap_param_gather": True, "overlap_grad_reduce": True, "distributed_optimizer": False}},
            "optim.overlap_param_gather needs optim.overlap_grad_reduce and optim.distributed_optimizer",
        ),
    ],
)
def test_bad_combinations_are_refused(sections: dict, message: str) -> None:
    from srpo_mcore.config import from_dict

    cfg = from_dict(RunConfig, {"model": {"preset": "7b"}, **sections})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cfg.validate(world_size=8)


def test_gpu_only_fields_are_refused_without_cuda() -> None:
    assert gpu_only_fields(ModelConfig(recompute="full"), OptimConfig()) == []  # recompute runs on CPU
    model = ModelConfig(fused_kernels=True, transformer_impl="transformer_engine", attention_backend="fused")
    assert gpu_only_fields(model, OptimConfig(overlap_grad_reduce=True)) == [
        "model.fused_kernels",
        "model.attention_backend=fused",
        "optim.overlap_grad_reduce",
    ]
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from srpo_mcore.grpo_trainer import GRPOTrainer

    cfg = RunConfig(
        model=ModelConfig(hf_dir="/nonexistent", fused_kernels=True), optim=OptimConfig(overlap_grad_reduce=True)
    )
    with pytest.raises(ConfigError, match=r"model\.fused_kernels, optim\.overlap_grad_reduce: GPU features"):
        GRPOTrainer(cfg)
