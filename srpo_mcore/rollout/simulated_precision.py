"""Simulated rollout precision: the trainer's weights rounded as a lower precision would round them.

Owns ``simulate_precision`` (a transform of the refit stream of ``(HF name, tensor)`` pairs) for
``rollout.simulate_mismatch`` — controlled rollout/trainer mismatch experiments on CPU, where the
engine has no low-precision kernels. Each tensor is rounded and returned in its own dtype, so the
engine computes in that dtype with rounded values:

- ``bf16``: every floating tensor rounded to bfloat16 (round to nearest even);
- ``fp8``: the language model's linear weights (attention Q/K/V/O, MLP gate/up/down) fake-quantised
  to float8 e4m3 with one scale per tensor (``amax / 448``, e4m3's largest finite value);
  embeddings, the LM head, norms, the vision tower and the merger are left as they are.

Does not own: serving the weights (``rollout.engine``), FP8 checkpoints, real FP8 kernels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

MODES = ("none", "bf16", "fp8")
FP8_E4M3_MAX = 448.0
LM_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to bfloat16, in `t`'s dtype (non-floating tensors unchanged)."""
    return t.to(torch.bfloat16).to(t.dtype) if t.is_floating_point() else t


def fake_quant_fp8(t: torch.Tensor) -> torch.Tensor:
    """`t` quantised to float8 e4m3 with a per-tensor scale and dequantised, in `t`'s dtype."""
    amax = t.detach().abs().max().float()
    if amax == 0:
        return t.clone()
    scale = amax / FP8_E4M3_MAX
    return ((t.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(t.dtype)


def simulate_precision(
    weights: Iterable[tuple[str, torch.Tensor]], mode: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """The refit stream with each tensor rounded as `mode` (``none``/``bf16``/``fp8``) rounds it."""
    if mode not in MODES:
        raise ValueError(f"rollout.simulate_mismatch must be one of {', '.join(MODES)}, got {mode!r}")
    for name, tensor in weights:
        if mode == "bf16":
            yield name, round_bf16(tensor)
        elif mode == "fp8" and LM_LINEAR.match(name):
            yield name, fake_quant_fp8(tensor)
        else:
            yield name, tensor
