"""Qwen25VLModel under TP=2, PP=2, CP=2, TP=2+SP and TP=2xPP=2 equals the single-process model.

Every layout loads the same tiny HF checkpoint, runs one forward/backward through Megatron-Core's
pipeline schedule with Megatron DDP (``finalize_model_grads``: TP/SP norm, CP and embedding
reductions), and returns its logits and gradients. The test reassembles them — TP shards through
the weight map's split rules, CP chunks through the load-balanced layout — and compares them with
the TP=1 run: logits within 1e-5, every gradient within 1e-5 relative.
"""

from __future__ import annotations

import functools

import pytest
import torch

from dist_harness import run_distributed

NAME = "gqa"  # 4 heads / 2 KV groups / 2 layers: splits over TP=2 and PP=2


def _batch(path) -> dict:
    from qwen_cases import build_cases

    inp = build_cases(path)["one_image"]
    ids = inp["input_ids"]
    pad = (-ids.shape[1]) % 8  # sequence divisible by 2*cp*tp for every layout here
    filler = torch.full((1, pad), int(ids[0, -2]), dtype=ids.dtype)  # more text tokens
    inp["input_ids"] = torch.cat([ids, filler], dim=1)
    return inp


def _worker(tp: int, pp: int, cp: int, sp: bool) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from srpo_mcore.checkpoint.load_hf import load_hf_weights, rows_for_model
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.models.qwen2_5_vl.weight_map import canonical_name, global_name
    from srpo_mcore.parallel.context import cp_slice
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims(tp=tp, pp=pp, cp=cp, sequence_parallel=sp))
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    model = Qwen25VLModel(arch, ModelLayout(tp=tp, pp=pp, cp=cp, sequence_parallel=sp))
    load_hf_weights(model, path)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    inp = _batch(path)
    ids = inp["input_ids"]
    B, S = ids.shape
    labels = torch.roll(ids, -1, dims=1)
    cp_rank = ps.get_context_parallel_rank()
    captured = {}

    def loss_func(logits: torch.Tensor):
        captured["logits"] = logits.detach().clone()
        ce = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), cp_slice(labels, 1, cp, cp_rank))
        return ce.sum() / (B * S), {"loss": ce.detach().sum()}

    def forward_step(data_iterator, m):
        out = m(
            ids,
            pixel_values=inp["pixel_values"],
            image_grid_thw=inp["image_grid_thw"],
        )
        return out, loss_func

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[ddp],
        num_microbatches=1,
        seq_length=S,
        micro_batch_size=B,
        forward_only=False,
    )
    offset = ps.get_pipeline_model_parallel_rank() * (arch.text.num_layers // pp)
    grads = {}
    vision_params = 0
    for local, p, row in rows_for_model(model):
        name = canonical_name(global_name(local, offset))
        if name == "language_model.output_layer.weight" and arch.text.tie_word_embeddings:
            continue
        grads[name] = (p.main_grad.detach().clone(), row.tp_dim, row.tp_parts)
        if local.startswith("vision."):
            vision_params += p.numel()
    result = {
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "cp_rank": cp_rank,
        "last": ps.is_pipeline_last_stage(),
        "logits": captured.get("logits"),
        "grads": grads,
        "vision_params": vision_params,
    }
    destroy_parallel()
    return result


def _assemble(results: list[dict], tp: int, cp: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from srpo_mcore.checkpoint.transforms import tp_unshard
    from srpo_mcore.parallel.context import cp_unslice

    last = [r for r in results if r["last"]]
    by = {(r["tp_rank"], r["cp_rank"]): r for r in last}
    cp_parts = [torch.cat([by[(t, c)]["logits"] for t in range(tp)], dim=-1) for c in range(cp)]
    logits = cp_unslice(cp_parts, dim=1)
    grads: dict[str, torch.Tensor] = {}
    names = {n for r in results for n in r["grads"]}
    for name in names:
        holders = [r for r in results if name in r["grads"] and r["cp_rank"] == 0]
        shards = {r["tp_rank"]: r["grads"][name] for r in holders}
        _, dim, parts = shards[0]
        grads[name] = tp_unshard([shards[t][0] for t in range(tp)], dim=dim, parts=parts)
        for r in results:  # CP ranks hold identical (all-reduced) gradients
            if name in r["grads"] and r["cp_rank"] > 0:
                torch.testing.assert_close(r["grads"][name][0], shards[r["tp_rank"]][0], rtol=0, atol=1e-7)
    return logits, grads


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> tuple:
    tiny_checkpoint(NAME)
    results = run_distributed(_worker, 1, 1, 1, 1, False)
    return (*_assemble(results, 1, 1), results[0]["vision_params"])


LAYOUTS = {
    "tp2": (2, 1, 1, False),
    "tp2_sp": (2, 1, 1, True),
    "pp2": (1, 2, 1, False),
    "cp2": (1, 1, 2, False),
    "tp2_pp2": (2, 2, 1, False),
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_layout_equals_tp1(reference: tuple, layout: str) -> None:
    tp, pp, cp, sp = LAYOUTS[layout]
    ref_logits, ref_grads, ref_vision = reference
    results = run_distributed(functools.partial(_worker), tp * pp * cp, tp, pp, cp, sp)
    logits, grads = _assemble(results, tp, cp)
    err = (logits - ref_logits).abs().max().item()
    assert err < 1e-5, f"{layout}: logits differ by {err:.2e}"
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        rel = ((grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
        assert rel < 1e-5, f"{layout}: gradient of {name} differs by {rel:.2e} (relative)"
    if tp == 2:
        first = [r for r in results if r["pp_rank"] == 0]
        assert all(r["vision_params"] < 0.55 * ref_vision for r in first), (
            f"vision parameters per rank {[r['vision_params'] for r in first]} vs {ref_vision} at TP=1"
        )
