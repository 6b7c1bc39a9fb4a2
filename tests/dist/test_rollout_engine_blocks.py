"""Rollout groups with engines shared by blocks of ranks (``ranks_per_engine``), over 4 gloo processes.

Each rank holds a stand-in engine that records what it was asked; the ranks of one block must
submit the same prompts, the blocks must cover the batch once, and every rank must end up with the
same groups as a single process that generated everything.
"""

from __future__ import annotations

import pytest

from dist_harness import run_distributed

WORLD = 4


def _blocks_worker(ranks_per_engine: int) -> tuple[list[list[str]], list[tuple[str, list[int], list[float]]]]:
    import torch.distributed as dist

    from srpo_mcore.config import RewardConfig
    from srpo_mcore.rl.groups import request_seed, rollout_groups
    from srpo_mcore.rl.rewards import RewardScorer
    from srpo_mcore.rollout.types import RolloutRequest, RolloutSample

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def generate(self, requests: list[RolloutRequest], *, seeds: list[int]) -> list[list[RolloutSample]]:
            self.calls.append([r.key for r in requests])
            return [
                [
                    RolloutSample(j, r.key, [s], [s % 97, k], [-0.5, -0.25], "stop", f"<answer>{s % 3}</answer>")
                    for k in range(2)
                ]
                for j, (r, s) in enumerate(zip(requests, seeds, strict=True))
            ]

    dist.init_process_group("gloo")
    requests = [RolloutRequest(prompt=f"q{i}", key=str(i)) for i in range(7)]
    seeds = [request_seed(3, 1, i) for i in range(7)]
    engine = Recorder()
    with RewardScorer(RewardConfig(num_workers=0), count_tokens=lambda xs: [len(x) for x in xs]) as scorer:
        groups = rollout_groups(engine, scorer, requests, ["0"] * 7, seeds=seeds, ranks_per_engine=ranks_per_engine)
    dist.destroy_process_group()
    summary = [(",".join(s.key for s in g.samples), [t for s in g.samples for t in s.token_ids], [r.total for r in g.rewards]) for g in groups]
    return engine.calls, summary


@pytest.mark.parametrize("ranks_per_engine", [1, 2, 4])
def test_blocks_share_prompts_and_gather_once(ranks_per_engine: int) -> None:
    results = run_distributed(_blocks_worker, WORLD, ranks_per_engine)
    calls = [c for c, _ in results]
    engines = WORLD // ranks_per_engine
    for rank in range(WORLD):
        block = rank // ranks_per_engine
        assert calls[rank] == calls[block * ranks_per_engine], "ranks of one engine submitted different prompts"
    per_engine = [calls[e * ranks_per_engine] for e in range(engines)]
    submitted = [k for c in per_engine for keys in c for k in keys]
    assert submitted == [str(i) for i in range(7)]  # every prompt once, in order, across the engines
    summaries = [s for _, s in results]
    assert all(s == summaries[0] for s in summaries)
    assert [keys for keys, _, _ in summaries[0]] == [f"{i},{i}" for i in range(7)]  # each group its own samples
    assert all(len(toks) == 4 for _, toks, _ in summaries[0])  # 2 samples x 2 tokens, not duplicated
