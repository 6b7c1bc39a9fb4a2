"""On a CUDA machine: the rollout bridge with vLLM on the GPU — generation with an image, in-place
refit from the Megatron trainer, and a fresh engine on the exported checkpoint agreeing with it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from dist_harness_gpu import run_single, tiny_policy_on_gpu


def _worker(export_dir: str) -> dict:
    import torch
    from test_rollout_bridge import _requests, _rollout_cfg

    from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
    from srpo_mcore.parallel.setup import destroy_parallel
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights

    path, arch, model = tiny_policy_on_gpu()
    engine = RolloutEngine(path, _rollout_cfg(), dtype="bf16")
    requests = _requests(path)
    before = engine.generate(requests, greedy=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.sin(1000.0 * p))
    engine.update_weights((n, t.cuda()) for n, t in iter_hf_weights(model))
    after = engine.generate(requests, greedy=True)
    weights = engine.compare_weights(iter_hf_weights(model)).describe()
    write_hf_checkpoint(
        ((n, t.cpu()) for n, t in iter_hf_weights(model)), arch, export_dir, source_dir=path, force=True
    )
    engine.close()
    fresh = RolloutEngine(export_dir, _rollout_cfg(), dtype="bf16")
    again = fresh.generate(requests, greedy=True)
    destroy_parallel()
    return {
        "changed": [b[0].token_ids for b in before] != [a[0].token_ids for a in after],
        "same_as_fresh": [a[0].token_ids for a in after] == [f[0].token_ids for f in again],
        "weights": weights,
    }


def test_refit_on_gpu_matches_fresh_engine(tmp_path: Path) -> None:
    r = run_single(_worker, str(tmp_path / "export"))
    assert r["changed"] and r["same_as_fresh"], r
    assert r["weights"].endswith("tensors equal"), f"engine weights after reload_weights: {r['weights']}"


def _blocks_worker(path: str) -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import tensor_parallel
    from test_rollout_bridge import _requests, _rollout_cfg

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.groups import request_seed
    from srpo_mcore.rollout.distribute import engine_of, gather_samples, shard_bounds
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights

    init_parallel(ParallelDims(tp=2), backend="nccl")
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = Qwen25VLModel(Qwen25VLArch.from_hf(path), ModelLayout(tp=2, dtype="bf16")).cuda()
    load_hf_weights(model, path)
    engine = RolloutEngine(path, _rollout_cfg(), dtype="bf16", rollout_tp=2)  # 2 engines of 2 GPUs
    requests = _requests(path) * 2
    seeds = [request_seed(5, 0, i) for i in range(len(requests))]
    index, engines = engine_of(dist.get_rank(), dist.get_world_size(), engine.ranks_per_engine)
    start, end = shard_bounds(len(requests), index, engines)

    def tokens(groups: list) -> list:
        return [[s.token_ids for s in g] for g in groups]

    shared = tokens(gather_samples(engine.generate(requests[start:end], seeds=seeds[start:end]), ranks_per_engine=2))
    alone = tokens(engine.generate(requests, seeds=seeds))  # this engine serving every prompt itself
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.sin(1000.0 * p))
    engine.update_weights((n, t.cuda()) for n, t in iter_hf_weights(model))
    after = tokens(engine.generate(requests, seeds=seeds))
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, after)
    destroy_parallel()
    return {"shared_equals_alone": shared == alone, "changed": after != alone, "engines_agree": everyone}


def test_rollout_engines_smaller_than_the_job(tiny_checkpoint) -> None:
    """4 GPUs, trainer TP=2, rollout_tp=2: two independent vLLM engines of two ranks each."""
    import pytest
    import torch

    if torch.cuda.device_count() < 4:
        pytest.skip("needs 4 GPUs")
    from dist_harness import run_distributed

    results = run_distributed(_blocks_worker, 4, str(tiny_checkpoint("gqa")))
    for r in results:
        assert r["shared_equals_alone"] and r["changed"], r
    assert all(x == results[0]["engines_agree"][0] for x in results[0]["engines_agree"])
