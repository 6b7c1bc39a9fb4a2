"""Run Megatron-Core 0.19's optimizers (Adam, mixed precision, distributed) on CPU with gloo.

Owns the redirections ``megatron.core.optimizer`` needs on a machine without CUDA, installed by
``enable_megatron_optim_cpu`` (called from ``_compat.megatron_cpu.enable_megatron_cpu``):

1. ``optimizer.py``, ``distrib_optimizer.py`` and ``clip_grads.py`` allocate bookkeeping scalars
   (found-inf flag, loss scale, overflow buffer, grad-norm accumulators) with ``device="cuda"``:
   the ``torch`` those modules see is a thin view whose ``tensor``/``zeros``/``empty``/``ones``
   place "cuda" tensors on the CPU. Everything else is torch's own.
2. They classify parameters by ``param.type()`` strings (``"torch.cuda.FloatTensor"``, ...) to pick
   the fp32 / fp16 / bf16 code path and assert it before clipping. While the optimizer is built and
   while gradients are clipped, CPU tensors report the matching ``torch.cuda.*`` name, so the same
   code path is taken as on GPU (no other caller ever sees the spoofed names).
3. The local (no Apex, no TE) multi-tensor L2 norm returns its result on ``device="cuda"``; the CPU
   version returns the same norm on the CPU.

4. The ``fully_reshardable`` optimizer-state loader copies into torch Adam's per-parameter ``step``,
   which it never loads (``_without_adam_steps``); saving it gathered over gloo makes every
   save warn that the ranks' common state differs, by design (``quiet_gathered_param_state``).

And the torch-Adam state helpers of checkpointing (``prime_adam_state``, ``restore_adam_steps``):
on GPU TE's FusedAdam keeps no per-parameter ``step``; torch's Adam does.

The maths — Adam (torch's AdamW, which Megatron uses when neither TE nor Apex is installed), main
fp32 params, clipping by the global norm over TP/PP, distributed-optimizer sharding — is Megatron's.

Does not own: the model-side shims (``megatron_cpu``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

_saved: dict[str, tuple[Any, str, Any]] = {}

_CUDA_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _on_cpu(device: Any) -> Any:
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda") or isinstance(device, int):
        return "cpu"
    return device


class _TorchOnCpu(types.ModuleType):
    """``torch`` for modules that hard-code ``device="cuda"``: constructors put those tensors on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def tensor(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.tensor(*args, device=_on_cpu(device), **kwargs)

    @staticmethod
    def zeros(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(*args, device=_on_cpu(device), **kwargs)

    @staticmethod
    def ones(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.ones(*args, device=_on_cpu(device), **kwargs)

    @staticmethod
    def empty(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.empty(*args, device=_on_cpu(device), **kwargs)


_original_type = torch.Tensor.type


def _type_as_cuda(self: torch.Tensor, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    if dtype is None and not kwargs:
        name = _original_type(self)
        return _CUDA_NAMES.get(name, name)
    return _original_type(self, dtype, non_blocking, **kwargs)


@contextlib.contextmanager
def cuda_type_names() -> Iterator[None]:
    """Within the block, CPU float tensors report ``torch.cuda.*Tensor`` from ``.type()``."""
    torch.Tensor.type = _type_as_cuda  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.type = _original_type  # type: ignore[method-assign]


def _with_cuda_type_names(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cuda_type_names():
            return fn(*args, **kwargs)

    return wrapper


def _cpu_l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: Any, per_tensor: bool, *args: Any) -> Any:
    norms = [torch.linalg.vector_norm(t.float()) for tensors in tensor_lists for t in tensors]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    return total.reshape(1), None


def _without_adam_steps(load: Callable[..., Any]) -> Callable[..., Any]:
    """Megatron-Core 0.19's ``load_parameter_state_from_fully_reshardable`` skips the saved ``step``
    (the parameter groups carry it, and the inner optimizer's load has already set it), then copies
    into every tensor of the parameter's live state — torch Adam's ``step`` included — and fails
    with ``KeyError: 'step'`` (TE's FusedAdam keeps no per-parameter step). The wrapped loader
    sees the states without ``step``; the step tensors are put back unchanged afterwards."""

    @functools.wraps(load)
    def wrapped(self: Any, state_dict: Any) -> Any:
        hidden = [(state, state.pop("step")) for state in self.optimizer.state.values() if "step" in state]
        try:
            return load(self, state_dict)
        finally:
            for state, step in hidden:
                state["step"] = step

    return wrapped


def enable_megatron_optim_cpu() -> None:
    """Install the optimizer redirections (idempotent)."""
    if _saved:
        return
    from megatron.core import optimizer as optimizer_pkg
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as optimizer_mod

    proxy = _TorchOnCpu()
    patches: list[tuple[Any, str, Any]] = [
        (optimizer_mod, "torch", proxy),
        (distrib_optimizer, "torch", proxy),
        (clip_grads, "torch", proxy),
        (clip_grads, "l2_norm_impl", _cpu_l2_norm),
    ]
    if clip_grads.multi_tensor_applier.__module__ != "megatron.core.utils":
        raise RuntimeError("megatron_optim_cpu expects Megatron's local multi-tensor fallbacks (no Apex/TE on CPU)")
    for owner, name in (
        (optimizer_mod, "clip_grad_by_total_norm_fp32"),
        (optimizer_pkg, "get_megatron_optimizer"),
        (optimizer_pkg, "_get_megatron_optimizer_based_on_param_groups"),
    ):
        patches.append((owner, name, _with_cuda_type_names(getattr(owner, name))))
    loader = "load_parameter_state_from_fully_reshardable"
    owner = distrib_optimizer.DistributedOptimizer
    patches.append((owner, loader, _without_adam_steps(getattr(owner, loader))))
    for owner, name, replacement in patches:
        _saved[f"{id(owner)}:{name}"] = (owner, name, getattr(owner, name))
        setattr(owner, name, replacement)


def disable_megatron_optim_cpu() -> None:
    """Restore the original functions."""
    for owner, name, original in _saved.values():
        setattr(owner, name, original)
    _saved.clear()


def prime_adam_state(optimizer: Any) -> None:
    """Give every parameter of torch's Adam/AdamW inside a Megatron optimizer an (empty) state.

    Without TE or Apex, Megatron's distributed optimizer reads Adam's ``step`` from the per-parameter
    state whenever it builds its state dict — to load into, and to save (``assert len(steps) == 1``
    fails on an optimizer that has not stepped yet: a GRPO run whose first steps had no group past
    the accuracy filter crashed at its first checkpoint) —; a freshly built optimizer has none yet
    (on GPU, TE's FusedAdam keeps ``step`` in the parameter groups instead). A loaded checkpoint
    overwrites every value set here; before a first update the values are exactly what torch's Adam
    would create itself (step 0, zero moments), so the update is unchanged.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def restore_adam_steps(optimizer: Any) -> None:
    """After a load, set torch Adam's per-parameter ``step`` from the parameter groups' ``step``.

    Megatron's distributed optimizer saves the iteration in the parameter groups; on the no-TE path
    its ``dp_reshardable`` loader then overwrites the per-parameter states with the saved shards,
    whose ``step`` entry does not carry the iteration (measured: 0 after resuming at step 4), so
    Adam's bias correction would restart. TE's FusedAdam reads the groups' ``step`` directly.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(chained, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            if "step" not in group:
                continue
            for p in group["params"]:
                state = inner.state.get(p)
                if state and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=torch.float32)


class _DropGatheredParamStateWarning(logging.Filter):
    """Drop dist-checkpointing's "common state dict differs" warning when the only difference is the
    ``('optimizer', 'param_state')`` that a memory-efficient ``fully_reshardable`` save returns as
    None on data-parallel ranks > 0 (their state was gathered onto DP rank 0, which writes it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (
            "common state dict differs" in msg
            and "Keys only on rank 0: []" in msg
            and msg.rstrip().endswith("[('optimizer', 'param_state')], Mismatched keys: []")
        )


@contextlib.contextmanager
def quiet_gathered_param_state() -> Iterator[None]:
    """While saving a gloo-gathered ``fully_reshardable`` checkpoint: no misleading warning per save."""
    logger = logging.getLogger("megatron.core.dist_checkpointing.validation")
    f = _DropGatheredParamStateWarning()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)
