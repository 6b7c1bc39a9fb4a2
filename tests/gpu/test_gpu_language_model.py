"""On a CUDA machine: the decoder runs on the GPU over NCCL with no CPU shims, bf16 close to fp32."""

from __future__ import annotations

import torch
from dist_harness_gpu import run_single


def _worker() -> dict:
    from megatron.core import tensor_parallel

    from srpo_mcore._compat import megatron_cpu
    from srpo_mcore.config import ModelConfig, ParallelConfig
    from srpo_mcore.models.language_model import build_language_model
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel

    init_parallel(ParallelDims(), backend="nccl")
    assert not megatron_cpu.is_enabled(), "CPU shims must stay off on a GPU machine"
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    out = {}
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    pos = torch.arange(64, device="cuda").unsqueeze(0).expand(2, -1)
    weights = None
    for dtype in ("fp32", "bf16"):
        model = build_language_model(ModelConfig(dtype=dtype), ParallelConfig()).cuda()
        if weights is None:
            weights = {k: v.float() for k, v in model.state_dict().items() if v is not None and torch.is_tensor(v)}
        else:
            model.load_state_dict({k: v.to(torch.bfloat16) for k, v in weights.items()}, strict=False)
        logits = model(ids, pos, attention_mask=None)
        logits.float().sum().backward()
        out[dtype] = logits.float().cpu()
    destroy_parallel()
    return out


def test_bf16_gpu_close_to_fp32() -> None:
    assert torch.cuda.is_available()
    out = run_single(_worker)
    err = (out["bf16"] - out["fp32"]).abs().max() / out["fp32"].abs().max()
    assert err < 3e-2, f"bf16 vs fp32 relative error {err:.2e}"
