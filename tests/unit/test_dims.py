"""ParallelDims arithmetic and its one complete error message."""

from __future__ import annotations

import pytest

from srpo_mcore.parallel.dims import LayoutError, ParallelDims
from srpo_mcore.parallel.setup import dist_env_from_environ, resolve_backend


def test_dp_is_what_the_world_leaves() -> None:
    assert ParallelDims(tp=2, pp=2).dp(world_size=8) == 2
    assert ParallelDims(tp=2, cp=2).dp(world_size=4) == 1


def test_every_problem_in_one_message() -> None:
    dims = ParallelDims(tp=4, pp=3, cp=2, sequence_parallel=True)
    with pytest.raises(LayoutError) as err:
        dims.check(world_size=16, num_attention_heads=6, num_query_groups=2, num_layers=4, seq_length=20)
    msg = str(err.value)
    for needle in ("world size 16", "num_attention_heads=6", "num_query_groups=2", "num_layers=4", "2*cp*tp = 16"):
        assert needle in msg, needle


def test_valid_layouts_have_no_problems() -> None:
    assert (
        ParallelDims(tp=2, pp=2, vpp=2).problems(
            world_size=4, num_attention_heads=28, num_query_groups=4, num_layers=28, seq_length=4096
        )
        == []
    )
    assert "vpp=2 needs parallel.pp > 1" in ParallelDims(vpp=2).problems()[0]
    assert "parallel.tp must be >= 1" in ParallelDims(tp=0).problems()[0]


def test_dist_env_torchrun_then_slurm_then_single() -> None:
    env = dist_env_from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_port) == (3, 4, 1, 1234)
    env = dist_env_from_environ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (env.rank, env.world_size, env.local_rank) == (5, 8, 1)
    assert dist_env_from_environ({}).world_size == 1


def test_backend_choice() -> None:
    import torch

    assert resolve_backend("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            resolve_backend("nccl")
