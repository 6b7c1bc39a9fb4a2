"""The engine's weights read back and compared with the trainer's export, bit for bit.

Owns ``compare_engine_weights(model, weights)``: run on the vLLM model inside the engine's worker,
it maps every exported (HF name, tensor) to the engine parameter vLLM loads it into — through the
model class's own ``hf_to_vllm_mapper`` and ``packed_modules_mapping`` (q/k/v rows stacked into
``qkv_proj``, gate/up into ``gate_up_proj``, in that order along dim 0) — and compares the bytes
with the tensor cast to the parameter's dtype (what the loader's copy does). Every engine parameter
must be covered, every exported tensor must land somewhere.

Valid for engines whose parameters hold whole tensors in checkpoint layout: the CPU engine (see
``_compat.vllm_cpu_weights``) and an unquantized GPU engine of rollout TP 1. Tensor-parallel
engines hold shards; ``RolloutEngine.compare_weights`` refuses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class WeightComparison:
    """What a comparison found (names are HF names, or engine names for ``missing``)."""

    tensors: int = 0
    bytes: int = 0
    mismatched: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.unknown or self.missing)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for what, names in (
            ("differ", self.mismatched),
            ("have no engine parameter", self.unknown),
            ("received no weight", self.missing),
        ):
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                parts.append(f"{len(names)} {what}: {', '.join(names[:limit])}{more}")
        return "; ".join(parts) or f"{self.tensors} tensors equal"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _equal(param: torch.Tensor, tensor: torch.Tensor) -> bool:
    if param.numel() != tensor.numel():
        return False
    return torch.equal(_bits(param), _bits(tensor.to(device=param.device, dtype=param.dtype)))


def compare_engine_weights(
    model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]], *, partial: bool = False
) -> WeightComparison:
    """Compare the vLLM `model`'s parameters with `weights` (HF names), bit for bit.

    Args:
        partial: The weights cover only part of the model (e.g. no frozen vision tower): engine
            parameters nothing was exported for are not reported as missing.
    """
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    params = dict(model.named_parameters(remove_duplicate=False))
    fused_of = {
        part: (fused, index, len(parts))
        for fused, parts in getattr(model, "packed_modules_mapping", {}).items()
        if len(parts) > 1
        for index, part in enumerate(parts)
    }
    result = WeightComparison()
    covered: set[int] = set()
    pending: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    for hf_name, tensor in weights:
        result.tensors += 1
        result.bytes += tensor.numel() * tensor.element_size()
        name = mapper.map_name(hf_name) if mapper is not None else hf_name
        if name in params:
            if not _equal(params[name], tensor):
                result.mismatched.append(hf_name)
            covered.add(params[name].data_ptr())
            continue
        pieces = (name or "").rsplit(".", 2)  # module path, packed leaf (e.g. k_proj), weight|bias
        if len(pieces) != 3 or pieces[1] not in fused_of:
            result.unknown.append(hf_name)
            continue
        fused, index, count = fused_of[pieces[1]]
        target = f"{pieces[0]}.{fused}.{pieces[2]}"
        if target not in params:
            result.unknown.append(hf_name)
            continue
        parts = pending.setdefault(target, {})
        parts[index] = (hf_name, tensor)
        if len(parts) < count:
            continue
        del pending[target]
        param, offset = params[target], 0
        for i in range(count):
            part_name, part = parts[i]
            rows = part.shape[0]
            if offset + rows > param.shape[0] or not _equal(param.narrow(0, offset, rows), part):
                result.mismatched.append(part_name)
            offset += rows
        if offset != param.shape[0]:
            result.mismatched.append(f"{target} ({param.shape[0]} rows, exported {offset})")
        covered.add(param.data_ptr())
    result.missing.extend(f"{target} (only {len(parts)} of its parts)" for target, parts in pending.items())
    if not partial:
        result.missing.extend(n for n, p in params.items() if p.data_ptr() not in covered)
    return result
