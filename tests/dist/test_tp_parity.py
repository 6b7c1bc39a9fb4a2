"""A tiny Megatron-Core GPTModel at TP=2 (and TP=2 + sequence parallel) over gloo equals TP=1.

Proves the CPU compatibility layer, the SP-capable norm and process-group setup: the TP=1 weights
are sharded onto the TP=2 ranks, and the logits and every parameter gradient (reassembled from the
shards, after Megatron's own ``finalize_model_grads``) match the single-process model.

Sharding uses the checkpoint library's ``tp_shard``/``tp_unshard``: contiguous chunks along
``partition_dim``, the SwiGLU ``linear_fc1`` gate and up halves chunked separately.
"""

from __future__ import annotations

import pytest
import torch

from dist_harness import run_distributed
from srpo_mcore.checkpoint.transforms import tp_shard, tp_unshard

pytestmark = pytest.mark.dist

MODEL = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128, vocab_size=256)


def _worker(tp: int, sp: bool, weights: dict[str, torch.Tensor] | None) -> dict:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from srpo_mcore.config import ModelConfig, ParallelConfig
    from srpo_mcore.models.language_model import build_language_model
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel

    init_parallel(ParallelDims(tp=tp, sequence_parallel=sp))
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model_cfg = ModelConfig(**MODEL)
    model = build_language_model(model_cfg, ParallelConfig(tp=tp, sequence_parallel=sp))
    if weights is not None:
        rank = parallel_state.get_tensor_model_parallel_rank()
        with torch.no_grad():
            for name, p in model.named_parameters():
                full = weights[name]
                tp_sharded = getattr(p, "tensor_model_parallel", False)
                parts = 2 if name.endswith("linear_fc1.weight") else 1  # SwiGLU [gate; up]
                p.copy_(tp_shard(full, dim=p.partition_dim, parts=parts, tp=tp, rank=rank) if tp_sharded else full)
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=False), model
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model_cfg.vocab_size, (2, 16), generator=gen)
    labels = torch.randint(0, model_cfg.vocab_size, (2, 16), generator=gen)
    pos = torch.arange(16).unsqueeze(0).expand(2, -1)
    logits = ddp(ids, pos, attention_mask=None)  # [b, s, vocab/tp]
    loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels).mean()
    loss.backward()
    finalize_model_grads([ddp])
    params = {}
    for name, p in model.named_parameters():
        dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
        params[name] = (p.detach().clone(), p.main_grad.detach().clone(), dim)
    destroy_parallel()
    return {"logits": logits.detach(), "loss": loss.item(), "params": params}


def _gather(results: list[dict]) -> dict:
    logits = torch.cat([r["logits"] for r in results], dim=-1)  # vocab-parallel logits
    params = {}
    for name, (w, g, dim) in results[0]["params"].items():
        if dim is None:
            for r in results[1:]:  # replicated parameters must agree across TP ranks
                torch.testing.assert_close(r["params"][name][1], g, rtol=0, atol=1e-6, msg=f"replicated grad {name}")
            params[name] = (w, g)
        else:
            parts = 2 if name.endswith("linear_fc1.weight") else 1
            params[name] = tuple(tp_unshard([r["params"][name][i] for r in results], dim=dim, parts=parts) for i in (0, 1))
    return {"logits": logits, "loss": results[0]["loss"], "params": params}


@pytest.fixture(scope="module")
def reference() -> dict:
    return _gather(run_distributed(_worker, 1, 1, False, None))


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2_sp"])
def test_tp2_equals_tp1(reference: dict, sp: bool) -> None:
    weights = {name: w for name, (w, _) in reference["params"].items()}
    got = _gather(run_distributed(_worker, 2, 2, sp, weights))
    assert got["params"].keys() == reference["params"].keys()
    for name, (w, g) in reference["params"].items():
        torch.testing.assert_close(got["params"][name][0], w, rtol=0, atol=0, msg=f"weights of {name} differ")
    logit_err = (got["logits"] - reference["logits"]).abs().max() / reference["logits"].abs().max()
    assert logit_err < 1e-5, f"logits: relative error {logit_err:.2e}"
    assert abs(got["loss"] - reference["loss"]) < 1e-5
    for name, (_, g) in reference["params"].items():
        gg = got["params"][name][1]
        rel = (gg - g).abs().max() / g.abs().max().clamp_min(1e-12)
        assert rel < 1e-5, f"grad of {name}: relative error {rel:.2e}"
