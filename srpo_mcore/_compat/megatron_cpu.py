"""Run Megatron-Core 0.19 on CPU with the gloo backend.

Owns: the two redirections Megatron-Core needs to run forward/backward on CPU:

1. ``torch.cuda.current_device()`` (used e.g. by the rotary embedding to place ``inv_freq``) returns
   the CPU device instead of raising "Torch not compiled with CUDA"/"no CUDA GPUs".
2. ``torch.cuda.current_stream()`` (Megatron DDP orders its gradient reduction against the current
   stream) returns a CPU stand-in whose wait/record methods do nothing: on CPU every operation is
   already ordered, so there is nothing to wait for.
3. ``get_default_causal_mask`` (the local attention's mask when none is passed) builds its mask on
   the CPU instead of ``device="cuda"``.
4. Megatron's pipeline schedules allocate a token counter with ``device="cuda"``: the
   ``torch`` they see is a thin view of torch whose ``zeros`` puts "cuda" tensors on the CPU;
   ``torch.cuda.synchronize`` (after batched p2p) is a no-op on CPU.
5. ``get_pos_emb_on_this_cp_rank`` (the rotary table of a context-parallel rank) builds its
   index with ``.cuda()``; the CPU version selects the same two load-balanced chunks.
6. ``LanguageModule.setup_embeddings_and_output_layer`` moves the tied output copy of the last
   pipeline stage to CUDA before all-reducing it with the embedding; on CPU the same all-reduce
   runs on the CPU tensor.
7. The tensor-parallel RNG tracker (``tensor_parallel.random``) keeps its named states as CPU
   generator states: ``_get_cuda_rng_state``/``_set_cuda_rng_state`` read and write the CPU
   generator, and ``CudaRNGStatesTracker.add`` seeds a CPU state. Forking the model-parallel RNG
   then works for dropout/initialisation exactly as on GPU, on the CPU generator.
8. Megatron's optimizers: see ``_compat.megatron_optim_cpu`` (installed together with these).

It is enabled only when CUDA is unavailable and refuses a megatron-core other than the pinned minor
version (set ``SRPO_ALLOW_UNTESTED_MCORE=1`` to try anyway). ``disable_megatron_cpu`` undoes it.

Does not own: model building. Callers must still use ``use_cpu_initialization=True`` and gloo.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any

import torch

TESTED_MCORE = (0, 19)

_saved: dict[str, Any] = {}


def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


class _CpuStream:
    """The CPU's only "stream": work is executed in program order, so ordering calls are no-ops."""

    device = torch.device("cpu")

    def wait_event(self, event: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


_CPU_STREAM = _CpuStream()


def _is_cuda(device: Any) -> bool:
    return device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda")


class _TorchOnCpu(types.ModuleType):
    """``torch`` for modules that hard-code ``device="cuda"``: everything is torch's, except that
    ``zeros`` places tensors requested on CUDA on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def zeros(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(*args, device="cpu" if _is_cuda(device) else device, **kwargs)


def _cpu_synchronize(device: Any = None) -> None:
    pass


def _cpu_pos_emb_on_this_cp_rank(pos_emb: torch.Tensor, seq_dim: int, cp_group: Any) -> torch.Tensor:
    if cp_group is None:
        raise ValueError("cp_group must be provided to get positional embedding per CP rank")
    cp_size, cp_rank = cp_group.size(), cp_group.rank()
    index = torch.tensor([cp_rank, 2 * cp_size - cp_rank - 1], device=pos_emb.device)
    pos_emb = pos_emb.view(*pos_emb.shape[:seq_dim], 2 * cp_size, -1, *pos_emb.shape[seq_dim + 1 :])
    pos_emb = pos_emb.index_select(seq_dim, index)
    return pos_emb.view(*pos_emb.shape[:seq_dim], -1, *pos_emb.shape[seq_dim + 2 :])


def _cpu_current_stream(device: Any = None) -> _CpuStream:
    return _CPU_STREAM


@functools.lru_cache(maxsize=32)
def _cpu_default_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _get_cpu_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_cpu_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cpu_tracker_add(self: Any, name: str, seed: int) -> None:
    """CudaRNGStatesTracker.add with a CPU generator state (same bookkeeping as upstream)."""
    self._is_initialized = True
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    self.seeds_.add(seed)
    if name in self.states_:
        raise Exception(f"cuda rng state {name} already exists")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    self.states_[name] = generator.get_state()


def _cpu_setup_embeddings_and_output_layer(self: Any) -> None:
    """Megatron's method with the tied-copy all-reduce done on CPU (its ``.cuda()`` skipped)."""
    original = _saved[_key(_language_module(), "setup_embeddings_and_output_layer")][2]
    meta = self.config.init_model_with_meta_device
    self.config.init_model_with_meta_device = True  # makes the original skip its .cuda() + all_reduce
    try:
        original(self)
    finally:
        self.config.init_model_with_meta_device = meta
    if (
        torch.distributed.is_initialized()
        and not meta
        and (self.share_embeddings_and_output_weights or getattr(self.config, "mtp_num_layers", 0))
        and self.config.pipeline_model_parallel_size > 1
        and self._is_in_embd_group()
    ):
        torch.distributed.all_reduce(self.shared_embedding_or_output_weight().data, group=self.embd_group)


def _language_module() -> Any:
    from megatron.core.models.common.language_module.language_module import LanguageModule

    return LanguageModule


def _key(owner: Any, name: str) -> str:
    return f"{id(owner)}:{name}"


def mcore_version() -> tuple[int, int, int]:
    """Installed megatron-core version as (major, minor, patch)."""
    from megatron.core import package_info

    return (package_info.MAJOR, package_info.MINOR, package_info.PATCH)


def is_enabled() -> bool:
    """Whether the CPU redirections are currently installed."""
    return bool(_saved)


def enable_megatron_cpu(*, force: bool = False) -> bool:
    """Install the CPU redirections (idempotent).

    Args:
        force: Install even when CUDA is available (tests only).

    Returns:
        True when the shims are active after the call, False when a GPU made them unnecessary.

    Raises:
        RuntimeError: megatron-core is not the version these shims were written for.
    """
    if _saved:
        return True
    if torch.cuda.is_available() and not force:
        return False
    version = mcore_version()
    if version[:2] != TESTED_MCORE and os.environ.get("SRPO_ALLOW_UNTESTED_MCORE") != "1":
        raise RuntimeError(
            f"srpo_mcore._compat.megatron_cpu was written for megatron-core {TESTED_MCORE[0]}.{TESTED_MCORE[1]}.x, "
            f"found {'.'.join(map(str, version))}; re-check the shims (tests/unit/test_compat.py) and update "
            "TESTED_MCORE, or set SRPO_ALLOW_UNTESTED_MCORE=1"
        )
    from megatron.core.fusions import fused_softmax
    from megatron.core.models.common.embeddings import rope_utils, rotary_pos_embedding, yarn_rotary_pos_embedding
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mrandom

    patches: list[tuple[Any, str, Any]] = [
        (torch.cuda, "current_device", _cpu_current_device),
        (torch.cuda, "current_stream", _cpu_current_stream),
        (torch.cuda, "synchronize", _cpu_synchronize),
        (schedules, "torch", _TorchOnCpu()),
        (rope_utils, "get_pos_emb_on_this_cp_rank", _cpu_pos_emb_on_this_cp_rank),
        (rotary_pos_embedding, "get_pos_emb_on_this_cp_rank", _cpu_pos_emb_on_this_cp_rank),
        (yarn_rotary_pos_embedding, "get_pos_emb_on_this_cp_rank", _cpu_pos_emb_on_this_cp_rank),
        (_language_module(), "setup_embeddings_and_output_layer", _cpu_setup_embeddings_and_output_layer),
        (fused_softmax, "get_default_causal_mask", _cpu_default_causal_mask),
        (mrandom, "_get_cuda_rng_state", _get_cpu_rng_state),
        (mrandom, "_set_cuda_rng_state", _set_cpu_rng_state),
        (mrandom.CudaRNGStatesTracker, "add", _cpu_tracker_add),
    ]
    for owner, name, replacement in patches:
        _saved[_key(owner, name)] = (owner, name, getattr(owner, name))
        setattr(owner, name, replacement)
    from srpo_mcore._compat.megatron_optim_cpu import enable_megatron_optim_cpu

    enable_megatron_optim_cpu()
    return True


def disable_megatron_cpu() -> None:
    """Restore the original functions."""
    from srpo_mcore._compat.megatron_optim_cpu import disable_megatron_optim_cpu

    disable_megatron_optim_cpu()
    for owner, name, original in _saved.values():
        setattr(owner, name, original)
    _saved.clear()
