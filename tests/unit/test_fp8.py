"""FP8 with ModelOpt (``checkpoint.fp8``): the export equals ModelOpt's own, tensor for tensor; the
rollout stream quantises what it says; the served (dequantised) values are ModelOpt's; bad input and
an unexported scheme are refused clearly; nothing imports ModelOpt when FP8 is off."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import modelopt.torch.quantization as mtq
import pytest
import torch
from safetensors import safe_open

from srpo_mcore.checkpoint.cli import mcore_to_hf_main
from srpo_mcore.checkpoint.convert import hf_to_mcore, mcore_to_hf
from srpo_mcore.checkpoint.fp8 import (
    FP8Error,
    dequantize,
    fake_quant_stream,
    modelopt_config,
    quantization_metadata,
    quantize_stream,
)
from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            for k in s.keys():  # noqa: SIM118 - safe_open is not iterable
                out[k] = s.get_tensor(k)
    return out


def _modelopt_export(hf: Path, out: Path, cfg: dict) -> Path:
    """ModelOpt's own path: mtq.quantize the HF model (weights only: no calibration data), export_hf_checkpoint."""
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf, dtype=torch.bfloat16).eval()
    mtq.quantize(model, cfg, forward_loop=None)
    export_hf_checkpoint(model, export_dir=out)
    return out


def _assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> int:
    assert sorted(ours) == sorted(theirs), (
        f"only ours: {sorted(set(ours) - set(theirs))}; only ModelOpt's: {sorted(set(theirs) - set(ours))}"
    )
    fp8 = 0
    for name in sorted(ours):
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        )
        same = torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        assert same, f"{name}: bytes differ from ModelOpt's export"
        fp8 += a.dtype == torch.float8_e4m3fn
    return fp8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    hf = build_tiny_checkpoint("gqa")
    mcore = hf_to_mcore(hf, root / "mcore", dtype="bf16")
    return {"root": root, "hf": hf, "mcore": mcore}


def test_export_equals_modelopts_own(tiny) -> None:
    """convert_mcore_to_hf --quantize fp8 (block128) == mtq.quantize + export_hf_checkpoint of the same
    model: names, dtypes and bytes of every tensor (FP8 weights, their block scales, the bf16 rest)
    and the same quantization metadata."""
    root = tiny["root"]
    assert mcore_to_hf_main(["--mcore-dir", str(tiny["mcore"]), "--out", str(root / "ours"), "--quantize", "fp8"]) == 0
    theirs = _modelopt_export(tiny["hf"], root / "theirs", mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG)
    ours_t, theirs_t = _tensors(root / "ours"), _tensors(theirs)
    assert _assert_same_tensors(ours_t, theirs_t) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    gate = ours_t["model.layers.0.mlp.gate_proj.weight_scale"]
    assert gate.shape == (2, 1, 1, 1), "256 x 128 gate: two 128 x 128 blocks"
    assert ours_t["visual.blocks.0.attn.qkv.weight"].dtype == torch.bfloat16, "the vision tower stays bf16"
    hf_quant = json.loads((theirs / "hf_quant_config.json").read_text())
    assert json.loads((root / "ours" / "hf_quant_config.json").read_text()) == hf_quant
    ours_cfg = json.loads((root / "ours" / "config.json").read_text())
    assert ours_cfg["quantization_config"] == json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg["quantization_config"]["quant_algo"] == "fp8_pb_wo"


def test_per_tensor_stream_equals_modelopts_export(tiny) -> None:
    """The rollout's per-tensor scheme: the same bytes as ModelOpt's per-tensor FP8 export (weights
    only): one scale per tensor, its own amax / 448 (ModelOpt's export does not fuse per-tensor FP8)."""
    root = tiny["root"]
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    assert cfg == modelopt_config("per_tensor")
    theirs = _tensors(_modelopt_export(tiny["hf"], root / "theirs-pt", cfg))
    hf = {k: v.to(torch.bfloat16) for k, v in _tensors(tiny["hf"]).items()}  # as ModelOpt's side loads it
    ours = dict(quantize_stream(hf.items(), "per_tensor"))
    quantised = {k: v for k, v in ours.items() if v.dtype == torch.float8_e4m3fn or k.endswith("_scale")}
    for name, value in quantised.items():
        assert name in theirs, f"{name} is not in ModelOpt's export"
        assert torch.equal(value.reshape(-1).view(torch.uint8), theirs[name].reshape(-1).view(torch.uint8)), (
            f"{name}: bytes differ"
        )
    assert len(quantised) == 2 * 7 * 2
    layer = "model.layers.1."
    for p in "qkv":
        amax = float(hf[f"{layer}self_attn.{p}_proj.weight"].abs().max())
        assert float(quantised[f"{layer}self_attn.{p}_proj.weight_scale"]) == pytest.approx(amax / 448.0, rel=1e-6)


def test_fake_quant_serves_modelopts_values(tiny) -> None:
    """CPU FP8 rollout: each LM linear weight is ModelOpt's FP8 weight x scale in the stream's dtype
    (equal to ModelOpt's own fake quantisation), everything else untouched."""
    hf = _tensors(tiny["hf"])
    for scheme in ("block128", "per_tensor"):
        q = dict(quantize_stream(hf.items(), scheme))
        served = dict(fake_quant_stream(hf.items(), scheme))
        assert sorted(served) == sorted(hf)
        for name, t in hf.items():
            if name + "_scale" in q:
                expected = dequantize(q[name], q[name + "_scale"], t.dtype)
                assert torch.equal(served[name], expected) and served[name].dtype == t.dtype
                err = (served[name].float() - t.float()).abs().max() / t.float().abs().max()
                assert 0 < err < 0.07, f"{scheme} {name}: relative error {err:.3g} is not FP8 e4m3's"
            else:
                assert served[name] is t, f"{scheme}: {name} must pass untouched"
    # ModelOpt's own fake quantisation of one block-quantised weight, in fp32
    name = "model.layers.0.mlp.gate_proj.weight"
    lin = torch.nn.Linear(128, 256, bias=False)
    lin.weight = torch.nn.Parameter(hf[name].float(), requires_grad=False)
    group = {name: hf[name].float(), name.replace("gate", "up"): hf[name.replace("gate", "up")].float()}
    mine = dict(fake_quant_stream(group.items(), "block128"))[name]
    wrapper = torch.nn.Sequential(lin)
    mtq.quantize(wrapper, modelopt_config("block128"), forward_loop=None)
    theirs = wrapper[0].weight_quantizer(wrapper[0].weight)
    assert torch.allclose(mine, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max())), "not ModelOpt's fake quant"


def test_dequantize_by_hand() -> None:
    """Block scales broadcast over whole and partial 128 x 128 blocks (k_proj of GQA is 64 rows)."""
    gen = torch.Generator().manual_seed(0)
    for rows, cols in ((256, 384), (300, 260), (64, 128)):
        w = torch.randn(rows, cols, generator=gen).to(torch.float8_e4m3fn)
        ob, ib = -(-rows // 128), -(-cols // 128)
        s = torch.rand(ob, 1, ib, 1, generator=gen)
        full = s.reshape(ob, ib).repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
        assert torch.equal(dequantize(w, s, torch.float32), w.float() * full), (rows, cols)
    assert torch.equal(dequantize(w, torch.tensor(0.5), torch.bfloat16), (w.float() * 0.5).to(torch.bfloat16))


def test_bad_input_is_refused_clearly(tiny) -> None:
    w = torch.randn(128, 128)
    with pytest.raises(FP8Error, match=r"model\.layers\.0\.self_attn\.k_proj\.weight, model\.layers\.0\.self_attn"):
        list(quantize_stream([("model.layers.0.self_attn.q_proj.weight", w)], "block128"))
    with pytest.raises(FP8Error, match=r"must be 2-D"):
        list(quantize_stream([("model.layers.0.mlp.down_proj.weight", torch.randn(4))], "block128"))
    with pytest.raises(FP8Error, match=r"FP8 scheme must be one of block128, per_tensor, got 'int8'"):
        list(quantize_stream([], "int8"))
    with pytest.raises(FP8Error, match=r"per_tensor is not exported: .* static activation scales"):
        quantization_metadata("per_tensor")
    out = tiny["root"] / "refused"
    with pytest.raises(Exception, match=r"--fp8-scheme per_tensor"):
        mcore_to_hf(tiny["mcore"], out, quantize="per_tensor")
    assert not out.exists(), "a refused export leaves nothing behind"


def test_bf16_paths_never_import_modelopt() -> None:
    code = (
        "import sys, srpo_mcore.grpo_trainer, srpo_mcore.checkpoint.cli, srpo_mcore.checkpoint.convert, "
        "srpo_mcore.rollout.refit, srpo_mcore.rollout.engine, srpo_mcore.checkpoint.fp8; "
        "assert 'modelopt' not in sys.modules, sorted(m for m in sys.modules if m.startswith('modelopt'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
