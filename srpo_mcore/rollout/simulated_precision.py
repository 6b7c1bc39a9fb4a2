"""Simulated rollout precision: the trainer's weights rounded as a lower precision would round them.

Owns ``simulate_precision`` (a transform of the refit stream of ``(HF name, tensor)`` pairs) for
``rollout.simulate_mismatch`` — controlled rollout/trainer mismatch experiments on CPU, where the
engine has no low-precision kernels. Each tensor is rounded and returned in its own dtype, so the
engine computes in that dtype with rounded values:

- ``bf16``: every floating tensor rounded to bfloat16 (round to nearest even);
- ``fp4``: the language model's linear weights (attention Q/K/V/O, MLP gate/up/down) fake-quantised
  to float4 e2m1 (values 0, 0.5, 1, 1.5, 2, 3, 4, 6) with one scale per block of 16 consecutive
  input elements (``amax / 6``), the shape of NVFP4 weights (whose block scales are themselves
  e4m3; here they stay fp32) — a strong mismatch; embeddings, the LM head, norms, the vision tower
  and the merger are left as they are.

Does not own: serving the weights (``rollout.engine``), FP8 (``checkpoint.fp8`` with ModelOpt:
``rollout.precision``), real low-precision kernels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

MODES = ("none", "bf16", "fp4")
LM_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to bfloat16, in `t`'s dtype (non-floating tensors unchanged)."""
    return t.to(torch.bfloat16).to(t.dtype) if t.is_floating_point() else t


FP4_E2M1_MAX = 6.0
FP4_BLOCK = 16
_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fake_quant_fp4(t: torch.Tensor, block: int = FP4_BLOCK) -> torch.Tensor:
    """2-D `t` rounded to float4 e2m1 with a scale per `block` elements of each row, in `t`'s dtype.

    Each value goes to the nearest e2m1 magnitude (an exact tie to the smaller one).
    """
    rows, cols = t.shape
    if cols % block:
        raise ValueError(f"fp4 simulation needs the input dimension ({cols}) divisible by {block}")
    x = t.detach().float().reshape(rows, cols // block, block)
    scale = x.abs().amax(dim=-1, keepdim=True) / FP4_E2M1_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    grid = torch.tensor(_E2M1_GRID)
    mid = (grid[1:] + grid[:-1]) / 2
    q = grid[torch.bucketize((x / scale).abs(), mid)] * torch.sign(x)
    return (q * scale).reshape(rows, cols).to(t.dtype)


def simulate_precision(weights: Iterable[tuple[str, torch.Tensor]], mode: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The refit stream with each tensor rounded as `mode` (``none``/``bf16``/``fp4``) rounds it."""
    if mode not in MODES:
        raise ValueError(f"rollout.simulate_mismatch must be one of {', '.join(MODES)}, got {mode!r}")
    for name, tensor in weights:
        if mode == "bf16":
            yield name, round_bf16(tensor)
        elif mode == "fp4" and LM_LINEAR.match(name):
            yield name, fake_quant_fp4(tensor)
        else:
            yield name, tensor
