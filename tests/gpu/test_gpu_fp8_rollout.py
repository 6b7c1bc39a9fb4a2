"""On a CUDA machine: FP8 rollout with vLLM's FP8 kernels (``rollout.precision=fp8``, block128).

The engine starts from the ModelOpt FP8 export of the trainer's weights (as ``grpo_trainer.py`` does on
GPU), serves the language model's linears with block-scaled FP8 GEMMs, and an in-place refit of
FP8 weights + scales (``checkpoint.fp8.quantize_stream``) gives the same greedy answers as a fresh
engine on the FP8 export of the updated weights. The FP8 engine's logprobs stay close to the bf16
engine's; refit times of both are printed. Needs one GPU and vLLM for CUDA; ~2 minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from dist_harness_gpu import run_single, tiny_policy_on_gpu


def _worker(root: str) -> dict:
    import torch
    from test_rollout_bridge import _requests, _rollout_cfg

    from srpo_mcore.checkpoint.fp8 import quantization_metadata, quantize_stream
    from srpo_mcore.checkpoint.hf_export import write_hf_checkpoint
    from srpo_mcore.parallel.setup import destroy_parallel
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights

    path, arch, model = tiny_policy_on_gpu()
    meta = quantization_metadata("block128")

    def fp8_export(out: str) -> str:
        stream = ((n, t.cpu()) for n, t in quantize_stream(iter_hf_weights(model), "block128"))
        write_hf_checkpoint(stream, arch, out, source_dir=path, force=True, quantization=meta)
        return out

    requests = _requests(path)
    bf16 = RolloutEngine(path, _rollout_cfg(), dtype="bf16")
    ref = bf16.generate(requests, greedy=True, max_tokens=1)
    start = time.perf_counter()
    bf16.update_weights(iter_hf_weights(model))
    bf16_refit = time.perf_counter() - start
    bf16.close()

    fp8 = RolloutEngine(fp8_export(f"{root}/fp8-0"), _rollout_cfg(), dtype="bf16")
    first = fp8.generate(requests, greedy=True, max_tokens=1)
    gap = max(abs(a[0].logprobs[0] - b[0].logprobs[0]) for a, b in zip(ref, first))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.sin(1000.0 * p))
    start = time.perf_counter()
    fp8.update_weights(quantize_stream(iter_hf_weights(model), "block128"))
    fp8_refit = time.perf_counter() - start
    after = fp8.generate(requests, greedy=True)
    fp8.close()
    fresh = RolloutEngine(fp8_export(f"{root}/fp8-1"), _rollout_cfg(), dtype="bf16")
    again = fresh.generate(requests, greedy=True)
    fresh.close()
    destroy_parallel()
    print(f"fp8 vs bf16 first-token logprob gap {gap:.4f}; refit bf16 {bf16_refit:.3f} s, fp8 {fp8_refit:.3f} s")
    return {
        "gap": gap,
        "same_as_fresh": [a[0].token_ids for a in after] == [f[0].token_ids for f in again],
    }


def test_fp8_engine_refit_matches_fresh_fp8_engine(tmp_path: Path) -> None:
    r = run_single(_worker, str(tmp_path))
    assert r["same_as_fresh"], r
    assert r["gap"] < 0.5, f"FP8 engine's first-token logprob is {r['gap']:.3f} from the bf16 engine's"
