"""The vLLM rollout bridge on CPU, colocated with the Megatron trainer (1 process, and 2 processes
with the trainer at TP=2 and at PP=2; one in-process engine per rank).

Each run: start an engine from the tiny HF checkpoint, check that the trainer's export of the
untouched weights is bit-identical to the checkpoint, change the trainer's weights, refit the
engine in place (streamed in small buckets), and compare (a) the engine's logprobs of its sampled
tokens with the trainer's own logprobs (<= 1e-4, fp32), (b) the engine's parameters with the
trainer's export, bit for bit (all differ before the refit), and (c) after the run, a fresh engine
started from the exported HF checkpoint: its greedy generations and logprobs must equal the
refitted engine's exactly. The same prompts before and after the refit must give different,
new-model outputs (no stale prefix or encoder cache).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dist"))

from dist_harness import run_distributed

NAME = "gqa"
MAX_TOKENS = 12


def _requests(path: Path) -> list:
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer

    from srpo_mcore.rollout.types import RolloutRequest

    tok = AutoTokenizer.from_pretrained(path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))

    def chat(content: list) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    return [
        RolloutRequest(chat([{"type": "image"}, {"type": "text", "text": "How many circles?"}]), (image,), key="img"),
        RolloutRequest(chat([{"type": "text", "text": "What is 3 + 4?"}]), (), key="txt"),
    ]


def _rollout_cfg():
    from srpo_mcore.config import RolloutConfig

    return RolloutConfig(n=1, max_tokens=MAX_TOKENS, max_model_len=512, kv_cache_gib=0.25)


def _trainer_logprobs(model, path: Path, requests: list, samples: list) -> list[list[float]]:
    """The trainer's logprobs of each sampled response (vocab-parallel; through the PP schedule)."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from transformers import AutoProcessor

    from srpo_mcore.rl.logprobs import token_logprobs

    proc = AutoProcessor.from_pretrained(path)
    out = []
    for req, sample in zip(requests, samples):
        enc = proc(text=[req.prompt], images=list(req.images) or None, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == sample.prompt_token_ids, "trainer and engine tokenise the prompt alike"
        ids = torch.tensor([sample.prompt_token_ids + sample.token_ids])
        n_prompt = len(sample.prompt_token_ids)
        captured = {}

        def step(_it, m, ids=ids, enc=enc, n_prompt=n_prompt, captured=captured):
            logits = m(ids, pixel_values=enc.get("pixel_values"), image_grid_thw=enc.get("image_grid_thw"))

            def loss(logits):
                lp = token_logprobs(logits[:, n_prompt - 1 : -1], ids[:, n_prompt:])
                captured["lp"] = lp[0].tolist()
                return lp.sum() * 0, {}

            return logits, loss

        with torch.no_grad():
            get_forward_backward_func()(
                forward_step_func=step,
                data_iterator=iter([None]),
                model=[model],
                num_microbatches=1,
                seq_length=ids.shape[1],
                micro_batch_size=1,
                forward_only=True,
            )
        out.append(captured.get("lp") if ps.is_pipeline_last_stage() else None)
    return out


def _worker(tp: int, pp: int, export_dir: str) -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
    from srpo_mcore.checkpoint.hf_io import HFCheckpoint
    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims(tp=tp, pp=pp))
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    model = Qwen25VLModel(arch, ModelLayout(tp=tp, pp=pp)).eval()
    load_hf_weights(model, path)
    requests = _requests(path)
    engine = RolloutEngine(path, _rollout_cfg(), dtype="fp32", seed=dist.get_rank())

    # 1. The export of unchanged weights is the checkpoint, bit for bit.
    ckpt = HFCheckpoint(path)
    exported = dict(iter_hf_weights(model, bucket_bytes=64 * 1024))
    untouched_equal = set(exported) == set(ckpt.names()) and all(
        torch.equal(t, ckpt.get(n)) for n, t in exported.items()
    )

    before = engine.generate(requests, greedy=True)
    with torch.no_grad():  # a deterministic change, identical on ranks that replicate a tensor
        for p in model.parameters():
            p.add_(0.05 * torch.sin(1000.0 * p))
    stale = engine.compare_weights(iter_hf_weights(model, bucket_bytes=64 * 1024))
    stats = engine.update_weights(iter_hf_weights(model, bucket_bytes=64 * 1024))
    refitted = engine.compare_weights(iter_hf_weights(model, bucket_bytes=64 * 1024))
    after = engine.generate(requests, greedy=True)
    sampled = engine.generate(requests, n=1, seed=7)
    weights = list(iter_hf_weights(model))
    if dist.get_rank() == 0:
        write_hf_checkpoint(weights, arch, export_dir, source_dir=path, force=True)
    trainer_lp = _trainer_logprobs(model, path, requests, [s[0] for s in sampled])
    result = {
        "rank": dist.get_rank(),
        "last": ps.is_pipeline_last_stage(),
        "untouched_equal": untouched_equal,
        "before": [s[0].token_ids for s in before],
        "after": [s[0].token_ids for s in after],
        "after_lp": [s[0].logprobs for s in after],
        "engine_lp": [s[0].logprobs for s in sampled],
        "trainer_lp": trainer_lp,
        "refit_tensors": stats.tensors,
        "stale": (len(stale.mismatched), stale.tensors),
        "refitted": refitted.describe() if not refitted.ok else "",
    }
    dist.barrier()
    engine.close()
    destroy_parallel()
    return result


def _fresh_engine(export_dir: str) -> dict:
    from srpo_mcore.checkpoint.hf_io import HFCheckpoint
    from srpo_mcore.rollout.engine import RolloutEngine

    engine = RolloutEngine(export_dir, _rollout_cfg(), dtype="fp32", seed=0)
    out = engine.generate(_requests(Path(export_dir)), greedy=True)
    ckpt = HFCheckpoint(export_dir)
    loaded = engine.compare_weights((n, ckpt.get(n)) for n in ckpt.names())
    return {"tokens": [s[0].token_ids for s in out], "lp": [s[0].logprobs for s in out], "loaded": loaded.describe()}


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_refit_equals_fresh_engine_and_trainer(tp: int, pp: int, tmp_path: Path, tiny_checkpoint) -> None:
    tiny_checkpoint(NAME)
    export = str(tmp_path / "export")
    results = run_distributed(_worker, tp * pp, tp, pp, export)
    (fresh,) = run_distributed(_fresh_engine, 1, export)
    n_tensors = len(__import__("srpo_mcore.checkpoint.hf_io", fromlist=["HFCheckpoint"]).HFCheckpoint(export).names())
    assert fresh["loaded"] == f"{n_tensors} tensors equal", "vLLM's own loader is what the comparison expects"
    for r in results:
        assert r["untouched_equal"], f"rank {r['rank']}: export of the loaded weights is not the checkpoint"
        assert r["refit_tensors"] == n_tensors
        assert r["stale"] == (n_tensors, n_tensors), "before the refit every changed tensor differs"
        assert r["refitted"] == "", f"rank {r['rank']}: engine weights != the trainer's export: {r['refitted']}"
        assert r["after"] == fresh["tokens"], f"rank {r['rank']}: refitted engine != fresh engine on the export"
        assert r["after_lp"] == fresh["lp"], "logprobs of refitted and fresh engines are bitwise equal"
        assert r["before"] != r["after"], "the same prompts must change output after the refit (no stale cache)"
        if r["last"]:
            for eng, trn in zip(r["engine_lp"], r["trainer_lp"]):
                assert 0 < len(eng) == len(trn)
                gap = max(abs(a - b) for a, b in zip(eng, trn))
                assert gap <= 1e-4, f"engine vs trainer logprob gap {gap:.2e}"


def _frozen_vision_worker() -> dict:
    import torch
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.models.qwen2_5_vl.weight_map import weight_rows
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    model = Qwen25VLModel(arch, ModelLayout(freeze_vision=True))
    load_hf_weights(model, path)
    engine = RolloutEngine(path, _rollout_cfg(), dtype="fp32")
    requests = _requests(path)[:1]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # what training can change: the language model only
                p.add_(0.05 * torch.sin(1000.0 * p))
    partial = engine.update_weights(iter_hf_weights(model, include_vision=False))
    after_partial = engine.generate(requests, greedy=True)[0][0]
    partial_check = engine.compare_weights(iter_hf_weights(model, include_vision=False), partial=True)
    whole = dict(iter_hf_weights(model))
    whole_check = engine.compare_weights(whole.items())  # the frozen tower never changed
    flipped = dict(whole)
    victim = "model.layers.1.self_attn.k_proj.weight"
    flipped[victim] = whole[victim].clone()
    flipped[victim].view(-1)[7] = torch.nextafter(flipped[victim].view(-1)[7], torch.tensor(1.0))  # one ulp
    flipped_check = engine.compare_weights(flipped.items())
    dropped = {n: t for n, t in whole.items() if n != "model.layers.0.mlp.down_proj.weight"}
    dropped_check = engine.compare_weights(dropped.items())
    full = engine.update_weights(iter_hf_weights(model))
    after_full = engine.generate(requests, greedy=True)[0][0]
    text_tensors = sum(len(r.hf) for r in weight_rows(arch) if not r.mcore.startswith("vision."))
    engine.close()
    destroy_parallel()
    return {
        "partial": partial.tensors,
        "full": full.tensors,
        "text_tensors": text_tensors,
        "same": (after_partial.token_ids, after_partial.logprobs) == (after_full.token_ids, after_full.logprobs),
        "checks": [c.describe() for c in (partial_check, whole_check, flipped_check, dropped_check)],
        "flipped": (flipped_check.mismatched, flipped_check.missing),
        "dropped": (dropped_check.mismatched, dropped_check.missing),
    }


def test_frozen_vision_refit_moves_only_language_model_weights(tiny_checkpoint) -> None:
    tiny_checkpoint(NAME)
    (r,) = run_distributed(_frozen_vision_worker, 1)
    assert r["partial"] == r["text_tensors"] < r["full"]
    assert r["same"], "a text-only refit serves the same model as a full refit when the vision tower is frozen"
    partial, whole = r["checks"][:2]
    assert partial == f"{r['text_tensors']} tensors equal", partial
    assert whole == f"{r['full']} tensors equal", whole
    # One ulp in one tensor is found and named; so is an engine parameter nothing was loaded into.
    assert r["flipped"] == (["model.layers.1.self_attn.k_proj.weight"], [])
    assert r["dropped"] == ([], ["language_model.model.layers.0.mlp.down_proj.weight"])


def _seeded_batch_worker() -> dict:
    from srpo_mcore.config import RolloutConfig
    from srpo_mcore.rollout.engine import CPU_PREFILL_TOKENS, RolloutEngine
    from srpo_mcore.rollout.types import RolloutRequest
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    filler = " ".join(["the sum of the digits"] * 40)  # ~200 prompt tokens each
    requests = [RolloutRequest(f"Question {i}: {filler}?", (), key=str(i)) for i in range(60)]
    cfg = RolloutConfig(n=3, temperature=1.0, max_tokens=8, max_model_len=512, kv_cache_gib=0.25)
    engine = RolloutEngine(path, cfg, dtype="fp32")
    try:
        prompt_tokens = sum(len(engine.tokenizer(r.prompt).input_ids) for r in requests)
        seeds = [1000 + i for i in range(len(requests))]
        together = engine.generate(requests, seeds=seeds)
        alone = [engine.generate([requests[i]], seeds=[seeds[i]])[0] for i in (0, 31, 59)]
    finally:
        engine.close()
    return {
        "prompt_tokens": prompt_tokens,
        "budget": CPU_PREFILL_TOKENS,
        "together": [[s.token_ids for s in together[i]] for i in (0, 31, 59)],
        "alone": [[s.token_ids for s in group] for group in alone],
    }


def test_seeded_batch_larger_than_one_prefill_step() -> None:
    """Per-request seeds with more prompt tokens than one scheduler step holds: vLLM's chunked prefill
    rewound each seeded generator, which a CPU generator cannot do ("CPU Generator does not use
    offset") and the whole batch crashed. Whole-prompt scheduling fixes it, and a request's samples
    stay those of its seed whatever batch it is in."""
    out = run_distributed(_seeded_batch_worker, world_size=1)[0]
    assert out["prompt_tokens"] > out["budget"], "the batch must not fit one prefill step"
    assert out["together"] == out["alone"]
