"""Process-group setup from torchrun / SLURM environment variables.

Owns: choosing the backend (NCCL with CUDA, gloo without, or as configured), ``init_process_group`` and
Megatron-Core's model-parallel groups for a validated `ParallelDims`, and tearing them down again.
On a machine without CUDA it enables the CPU compatibility layer first.

Does not own: the layout rules (``parallel.dims``), reading this process's place in the job from
torchrun / SLURM variables (``parallel.env``, re-exported here) or anything model-specific.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from srpo_mcore.parallel.dims import ParallelDims
from srpo_mcore.parallel.env import DistEnv, dist_env_from_environ

__all__ = ["DistEnv", "destroy_parallel", "dist_env_from_environ", "init_parallel", "resolve_backend"]


def resolve_backend(backend: str = "auto") -> str:
    """`auto` -> nccl when CUDA is available, else gloo. Rejects nccl without CUDA."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend=nccl needs CUDA, and torch.cuda.is_available() is False; use gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"parallel.backend must be auto, gloo or nccl, got {backend!r}")
    return backend


def init_parallel(
    dims: ParallelDims,
    *,
    backend: str = "auto",
    env: DistEnv | None = None,
    timeout_s: float = 600.0,
) -> DistEnv:
    """Initialise torch.distributed and Megatron-Core's parallel groups for `dims`.

    Safe to call in a single process without a launcher (world size 1). On CPU, the Megatron-Core
    compatibility shims are enabled first. `timeout_s` bounds the process-group setup and every
    collective of the default group and of Megatron's groups: a rank that died makes the others
    fail after at most that long.

    Returns:
        The `DistEnv` this process was initialised with.
    """
    from megatron.core import parallel_state

    env = env or dist_env_from_environ()
    dims.check(world_size=env.world_size)
    backend = resolve_backend(backend)
    if backend == "gloo":
        from srpo_mcore._compat.megatron_cpu import enable_megatron_cpu

        enable_megatron_cpu()
    else:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp,
        context_parallel_size=dims.cp,
        distributed_timeout_minutes=timeout_s / 60.0,  # Megatron's groups time out like the default one
    )
    return env


def destroy_parallel() -> None:
    """Tear down Megatron-Core's groups and the default process group (idempotent)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
