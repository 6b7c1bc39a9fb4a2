"""The 3B/7B/32B/72B presets build on the meta device with exactly HF's parameter count."""

from __future__ import annotations

from dist_harness import run_distributed


def _worker() -> dict[str, tuple[int, int]]:
    import torch
    from megatron.core import tensor_parallel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from srpo_mcore.models.qwen2_5_vl.config import PRESETS
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel

    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    out = {}
    for name, arch in PRESETS.items():
        with torch.device("meta"):
            ours = Qwen25VLModel(arch, ModelLayout(dtype="bf16"))
            hf = Qwen2_5_VLForConditionalGeneration(arch.to_hf())
        out[name] = (sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in hf.parameters()))
    destroy_parallel()
    return out


def test_preset_parameter_counts_equal_hf() -> None:
    (counts,) = run_distributed(_worker, 1)
    assert set(counts) == {"3b", "7b", "32b", "72b"}
    for name, (ours, hf) in counts.items():
        assert ours == hf, f"{name}: {ours:,} parameters vs HF {hf:,}"
    assert 8.2e9 < counts["7b"][0] < 8.4e9  # Qwen2.5-VL-7B has 8.29B parameters
