"""HF <-> Megatron-Core checkpoint conversion: bit-exact round trips at TP=2 x PP=2 (fp32 and bf16,
several shapes), resharding, logits of the converted checkpoint, vLLM on the export, and bad
inputs that fail with a named culprit and leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dist_harness import run_distributed
from srpo_mcore.checkpoint.cli import hf_to_mcore_main
from srpo_mcore.checkpoint.convert import ConversionError, hf_to_mcore, mcore_to_hf, reshard_mcore
from srpo_mcore.checkpoint.hf_io import HFCheckpoint


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = HFCheckpoint(a), HFCheckpoint(b)
    assert ca.names() == cb.names()
    for name in ca.names():
        ta, tb = ca.get(name), cb.get(name)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), f"{name} differs"
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())


def bf16_copy(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists(), f"{name} must not exist after a failed conversion"
    assert not list(parent.glob(f".{name}.tmp-*")), "no temporary directory may be left behind"


@pytest.mark.parametrize(
    "name,dtype,tp,pp",
    [("gqa", "fp32", 2, 2), ("tied", "bf16", 2, 2), ("deep", "fp32", 1, 2)],
    ids=["gqa-fp32-tp2pp2", "tied-bf16-tp2pp2", "deep-fp32-pp2"],
)
def test_round_trip_bit_exact(name: str, dtype: str, tp: int, pp: int, tmp_path: Path, tiny_checkpoint) -> None:
    src = tiny_checkpoint(name)
    if dtype == "bf16":
        src = bf16_copy(src, tmp_path / "src-bf16")
    mcore = hf_to_mcore(src, tmp_path / "mcore", tp=tp, pp=pp, dtype=dtype)
    assert (mcore / "srpo_mcore.json").exists() and (mcore / "tokenizer.json").exists()
    assert_same_checkpoint(src, mcore_to_hf(mcore, tmp_path / "hf"))
    if name == "gqa":  # Megatron (TP2, PP2) -> Megatron (TP1, PP1) -> HF is still the original
        flat = reshard_mcore(mcore, tmp_path / "mcore-tp1", tp=1, pp=1)
        assert_same_checkpoint(src, mcore_to_hf(flat, tmp_path / "hf-tp1", tp=1, pp=2))


@pytest.mark.parametrize("name,dtype", [("gqa", "fp32"), ("tied", "bf16")])
def test_one_rank_export_copies_stored_tensors(name: str, dtype: str, tmp_path: Path, tiny_checkpoint) -> None:
    """HF -> TP1 -> HF on one rank (and TP1 -> TP1 resharding): every tensor the weight map does not
    rearrange is copied file to file, not read; the attention QKV is read and rearranged; the
    result is still the original, bit for bit."""
    src = tiny_checkpoint(name)
    if dtype == "bf16":
        src = bf16_copy(src, tmp_path / "src-bf16")
    h2m: dict[str, int] = {}
    mcore = hf_to_mcore(src, tmp_path / "mcore", tp=1, pp=1, dtype=dtype, stats=h2m)
    m2h: dict[str, int] = {}
    out = mcore_to_hf(mcore, tmp_path / "hf", max_shard_bytes=300_000, stats=m2h)  # several shards
    assert_same_checkpoint(src, out)
    flat = reshard_mcore(mcore, tmp_path / "mcore-again", tp=1, pp=1)  # every chunk copied as stored
    assert_same_checkpoint(src, mcore_to_hf(flat, tmp_path / "hf-again"))
    ckpt = HFCheckpoint(src)
    interleaved = ("q_proj", "k_proj", "v_proj", "attn.qkv")  # GQA groups / vision heads: rearranged
    sizes = {n: ckpt.get(n).nbytes for n in ckpt.names()}
    expected = sum(b for n, b in sizes.items() if not any(k in n for k in interleaved))
    assert 0 < m2h["copied_bytes"] == h2m["copied_bytes"] == expected < sum(sizes.values())
    if dtype == "bf16":  # converted to fp32 on the way: nothing can be copied
        hf_to_mcore(src, tmp_path / "mcore-fp32", tp=1, pp=1, dtype="fp32", stats=h2m)
        assert h2m["copied_bytes"] == 0


def transformers_layout_copy(src: Path, dst: Path) -> Path:
    """`src` saved as transformers holds it in memory since 4.52: ``model.language_model.*``,
    ``model.visual.*`` (what several fine-tuning stacks write with ``save_file(model.state_dict())``)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText

    shutil.copytree(src, dst)
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.get_text_config().tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_transformers_tensor_layout_converts_bit_identically(tmp_path: Path, tiny_checkpoint) -> None:
    """One tiny model saved in the hub layout and in transformers' internal layout: both convert to
    bit-identical Megatron checkpoints (TP=2, and TP=1 where tensors are copied file to file), and the
    export of either is the hub layout."""
    from transformers import AutoModelForImageTextToText

    src = tiny_checkpoint("gqa")
    internal = transformers_layout_copy(src, tmp_path / "internal")
    names = HFCheckpoint(internal).names()
    assert any(n.startswith("model.language_model.") for n in names), names[:4]
    assert any(n.startswith("model.visual.") for n in names) and not any(n.startswith("visual.") for n in names)
    reloaded = AutoModelForImageTextToText.from_pretrained(internal, dtype=torch.float32).state_dict()
    original = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).state_dict()
    assert all(torch.equal(reloaded[k], original[k]) for k in original)  # transformers reads it as the same model
    for tp in (2, 1):
        a = hf_to_mcore(src, tmp_path / f"hub-tp{tp}", tp=tp, pp=1, dtype="fp32")
        b = hf_to_mcore(internal, tmp_path / f"internal-tp{tp}", tp=tp, pp=1, dtype="fp32")
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        tensor_files = [rel for rel in files_a if rel.suffix == ".distcp"]
        assert tensor_files
        for rel in tensor_files + [Path("srpo_mcore.json")]:  # .metadata pickles a run-unique id
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"tp={tp}: {rel} differs"
    assert_same_checkpoint(src, mcore_to_hf(b, tmp_path / "hf"))
    mixed = tmp_path / "mixed"
    shutil.copytree(internal, mixed)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(internal / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.language_model.layers.0.mlp.up_proj.weight"].clone()
    save_file(tensors, str(mixed / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"model\.language_model\.layers\.0\.mlp\.up_proj\.weight.*mixes two"):
        hf_to_mcore(mixed, tmp_path / "mixed-mcore", tp=1, pp=1)
    no_leftovers(tmp_path, "mixed-mcore")


def _logits_worker(mcore_dir: str, hf_dir: str) -> float:
    from megatron.core import dist_checkpointing, tensor_parallel
    from transformers import AutoModelForImageTextToText

    from qwen_cases import build_cases
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel

    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = Qwen25VLModel(Qwen25VLArch.from_hf(hf_dir), ModelLayout(init_weights=False)).eval()
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), mcore_dir), strict=True)
    hf = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32).eval()
    inp = build_cases(Path(hf_dir))["two_images"]
    with torch.no_grad():
        ref = hf(**inp).logits
        got = model(inp["input_ids"], pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
    destroy_parallel()
    return (torch.log_softmax(got, -1) - torch.log_softmax(ref, -1)).abs().max().item()


def _vllm_worker(a: str, b: str) -> tuple[list, list]:
    from srpo_mcore.config import RolloutConfig
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.types import RolloutRequest

    out = []
    for path in (a, b):
        engine = RolloutEngine(path, RolloutConfig(max_tokens=8, max_model_len=256, kv_cache_gib=0.25), dtype="fp32")
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
        out.append(engine.generate([RolloutRequest(prompt)], greedy=True)[0][0].token_ids)
        engine.close()
    return out[0], out[1]


def test_converted_checkpoint_reproduces_hf_and_export_runs_in_vllm(tmp_path: Path, tiny_checkpoint) -> None:
    src = tiny_checkpoint("gqa")
    mcore = hf_to_mcore(src, tmp_path / "mcore", tp=2, pp=1, dtype="fp32")
    (diff,) = run_distributed(_logits_worker, 1, str(mcore), str(src))
    assert diff <= 1e-4, f"converted checkpoint vs HF: log-softmax differs by {diff:.2e}"
    export = mcore_to_hf(mcore, tmp_path / "hf", max_shard_bytes=200_000)  # several shards + index
    assert (export / "model.safetensors.index.json").exists() and len(list(export.glob("model-*.safetensors"))) > 1
    (tokens,) = run_distributed(_vllm_worker, 1, str(src), str(export))
    assert tokens[0] == tokens[1] and len(tokens[0]) > 0, "vLLM generates the same from the export as from the source"


def test_bad_inputs_are_named_and_leave_nothing(tmp_path: Path, tiny_checkpoint, capsys) -> None:
    src = tiny_checkpoint("gqa")

    def variant(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    out = tmp_path / "out"
    cases = []
    d = variant("llama")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    cases.append((d, {}, r"config\.json: model_type 'llama' is not qwen2_5_vl"))

    from safetensors.torch import load_file, save_file

    d = variant("missing")
    t = load_file(str(d / "model.safetensors"))
    t.pop("model.layers.1.mlp.up_proj.weight")
    t["extra.bogus"] = torch.zeros(1)
    save_file(t, str(d / "model.safetensors"))
    cases.append((d, {}, r"missing tensors \(1\): model\.layers\.1\.mlp\.up_proj\.weight; unexpected tensors \(1\): extra\.bogus"))

    d = variant("truncated")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    cases.append((d, {}, r"model\.safetensors: cannot read"))

    cases.append((src, {"tp": 3}, r"--tp=3 does not divide model\.num_attention_heads=4"))
    for source, kwargs, pattern in cases:
        with pytest.raises(ConversionError, match=pattern):
            hf_to_mcore(source, out, **kwargs)
        no_leftovers(tmp_path, "out")

    d = variant("misshaped")  # caught inside the ranks: the error still names the tensor
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.0.mlp.down_proj.weight"] = torch.zeros(3, 3)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
        hf_to_mcore(d, out)
    no_leftovers(tmp_path, "out")

    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert hf_to_mcore_main(["--hf-dir", str(src), "--out", str(out)]) == 2
    assert "already exists and is not empty; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
