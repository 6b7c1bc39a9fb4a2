"""Qwen25VLModel (Megatron-Core, local spec, fp32, CPU) computes the same function as HF
``Qwen2_5_VLForConditionalGeneration`` on the same random weights, and its 3D position ids equal
HF ``get_rope_index`` — on three tiny configs (GQA/untied, MHA/tied, deeper with 1 KV group)."""

from __future__ import annotations

import pytest

from dist_harness import run_distributed
from srpo_mcore.tiny.checkpoints import TINY_CONFIGS

TOL = 1e-4


def _worker(name: str) -> dict[str, tuple[float, bool]]:
    import torch
    from megatron.core import tensor_parallel
    from transformers import AutoModelForImageTextToText

    from qwen_cases import build_cases
    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.models.qwen2_5_vl.rope import mm_token_type_ids
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(name)
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    arch = Qwen25VLArch.from_hf(path)
    ours = Qwen25VLModel(arch, ModelLayout()).eval()
    load_hf_weights(ours, path)
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    out = {}
    for case, inp in build_cases(path).items():
        ids, mask = inp["input_ids"], inp["attention_mask"]
        types = mm_token_type_ids(ids, arch.image_token_id, arch.video_token_id)
        with torch.no_grad():
            if "mm_token_type_ids" in inp:  # the processor's own modality ids agree with ours
                assert torch.equal(inp["mm_token_type_ids"].to(types.dtype), types)
            ref = hf(**{**inp, "mm_token_type_ids": types}).logits
            pos = ours.position_ids(ids, mask, inp.get("image_grid_thw"), inp.get("video_grid_thw"), inp.get("second_per_grid_ts"))
            got = ours(
                ids,
                position_ids=pos,
                attention_mask=mask if case == "padded_batch" else None,
                pixel_values=inp.get("pixel_values"),
                image_grid_thw=inp.get("image_grid_thw"),
                pixel_values_videos=inp.get("pixel_values_videos"),
                video_grid_thw=inp.get("video_grid_thw"),
            )
            same_pos = True
            if "image_grid_thw" in inp or "video_grid_thw" in inp:
                hpos, _ = hf.model.get_rope_index(
                    ids, types, inp.get("image_grid_thw"), inp.get("video_grid_thw"), inp.get("second_per_grid_ts"), mask
                )
                same_pos = torch.equal(pos, hpos)
        keep = mask.bool()
        diff = (torch.log_softmax(got.float(), -1) - torch.log_softmax(ref.float(), -1)).abs()[keep].max().item()
        out[case] = (diff, same_pos)
    destroy_parallel()
    return out


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logprobs_and_positions_match_hf(name: str, tiny_checkpoint) -> None:
    tiny_checkpoint(name)  # build once in the parent (cached for the worker)
    (result,) = run_distributed(_worker, 1, name)
    assert set(result) == {"text", "one_image", "two_images", "video", "padded_batch"}
    for case, (diff, same_pos) in result.items():
        assert same_pos, f"{name}/{case}: 3D position ids differ from HF get_rope_index"
        assert diff <= TOL, f"{name}/{case}: per-token log-softmax differs from HF by {diff:.2e}"
