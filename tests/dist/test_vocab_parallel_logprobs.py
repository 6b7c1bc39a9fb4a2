"""Token logprobs and entropy from vocab-parallel logits at TP=2 equal the full-vocabulary values."""

from __future__ import annotations

import torch

from dist_harness import run_distributed


def _worker(tp: int) -> tuple[torch.Tensor, torch.Tensor]:
    from megatron.core import parallel_state

    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.logprobs import token_entropy, token_logprobs

    init_parallel(ParallelDims(tp=tp))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 64, generator=gen) * 3
    targets = torch.randint(0, 64, (2, 5), generator=gen)
    shard = logits.chunk(tp, dim=-1)[parallel_state.get_tensor_model_parallel_rank()]
    out = token_logprobs(shard, targets, temperature=0.7), token_entropy(shard, temperature=0.7)
    destroy_parallel()
    return out


def test_tp2_equals_full_vocabulary() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 64, generator=gen) * 3
    targets = torch.randint(0, 64, (2, 5), generator=gen)
    logp = torch.log_softmax(logits / 0.7, -1)
    ref_lp = logp.gather(-1, targets[..., None])[..., 0]
    ref_ent = -(logp.exp() * logp).sum(-1)
    for lp, ent in run_distributed(_worker, 2, 2):
        torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
        torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
