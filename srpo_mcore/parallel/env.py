"""Where this process sits in the job, from the launcher's environment variables (no torch).

Owns ``DistEnv`` and ``dist_env_from_environ``: rank, world size and local rank from torchrun's
variables first, then SLURM's srun variables, else a single process; the rendezvous address.
Torch-free, so a command line can know its rank (e.g. to take the run directory's lock on rank 0)
before it imports anything heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def dist_env_from_environ(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the process's place from torchrun variables, else SLURM's, else a single process."""
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world, local = 0, 1, 0
    addr = env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env.get("MASTER_PORT", "29500"))
    return DistEnv(rank=rank, world_size=world, local_rank=local, master_addr=addr, master_port=port)
