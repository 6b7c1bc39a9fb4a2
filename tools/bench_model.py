#!/usr/bin/env python
"""Benchmark Qwen2.5-VL forward+backward: our Megatron-Core model vs HF transformers.

Builds a small random Qwen2.5-VL (or the tiny one), loads the same weights into both
implementations, and times forward+backward on one sample (an image plus text) per step.
Prints tokens/s for each and their ratio; on a GPU it also prints the model FLOPs utilisation
(6 x params x tokens / time / peak bf16 FLOPs).

    .venv/bin/python tools/bench_model.py [--size small|tiny] [--steps 5] [--seq 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

SMALL_TEXT: dict[str, Any] = dict(
    num_layers=4,
    hidden_size=256,
    ffn_hidden_size=688,
    num_attention_heads=8,
    num_query_groups=2,
    mrope_section=(4, 6, 6),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq", type=int, default=512, help="total tokens per sample (image + text)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak bf16 TFLOP/s for MFU (H100 SXM)")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_PORT", "29877")

    from megatron.core import tensor_parallel
    from transformers import AutoModelForImageTextToText

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint, tiny_processor

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = "bf16" if gpu else "fp32"
    tiny = build_tiny_checkpoint("gqa")
    with tempfile.TemporaryDirectory() as tmp:
        arch = Qwen25VLArch.from_hf(tiny)
        if args.size == "small":
            arch = replace(
                arch,
                text=replace(arch.text, **SMALL_TEXT),
                vision=replace(arch.vision, out_hidden_size=int(SMALL_TEXT["hidden_size"])),
            )
            torch.manual_seed(0)
            AutoModelForImageTextToText.from_config(arch.to_hf()).save_pretrained(tmp)
            path = tmp
        else:
            path = str(tiny)
        processor = tiny_processor()
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "count"}]}], tokenize=False
        )
        inp = processor(text=[prompt], images=[image], return_tensors="pt")
        ids = inp["input_ids"]
        filler = ids[:, -2:-1].expand(1, max(0, args.seq - ids.shape[1]))
        ids = torch.cat([ids, filler], dim=1).to(device)
        pixels, grid = inp["pixel_values"].to(device), inp["image_grid_thw"].to(device)
        tokens = ids.numel()

        init_parallel(ParallelDims())
        tensor_parallel.model_parallel_cuda_manual_seed(0)
        ours = Qwen25VLModel(arch, ModelLayout(dtype=dtype)).to(device)
        load_hf_weights(ours, path)
        hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16 if gpu else torch.float32).to(
            device
        )
        n_params = sum(p.numel() for p in ours.parameters())

        def step_ours() -> None:
            ours(ids, pixel_values=pixels, image_grid_thw=grid).float().logsumexp(-1).mean().backward()

        def step_hf() -> None:
            hf(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits.float().logsumexp(-1).mean().backward()

        rows = []
        for name, fn in (("srpo-mcore (Megatron-Core, local spec)", step_ours), ("HF transformers", step_hf)):
            fn()  # warm-up
            if gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if gpu:
                torch.cuda.synchronize()
            elapsed = (time.perf_counter() - start) / args.steps
            rows.append((name, tokens / elapsed, elapsed))
        destroy_parallel()

    print(
        f"\nQwen2.5-VL {args.size}: {n_params / 1e6:.1f}M parameters, {tokens} tokens/sample, {dtype} on {device.type}"
        f" ({torch.get_num_threads()} threads)"
    )
    print(
        f"| {'implementation':<40} | {'fwd+bwd tokens/s':>16} | {'s/step':>7} | {'vs HF':>6} |"
        + (" MFU |" if gpu else "")
    )
    print(f"|{'-' * 42}|{'-' * 18}|{'-' * 9}|{'-' * 8}|" + ("-----|" if gpu else ""))
    for name, tps, el in rows:
        line = f"| {name:<40} | {tps:>16.0f} | {el:>7.3f} | {tps / rows[1][1]:>6.2f} |"
        if gpu:
            line += f" {6 * n_params * tps / (args.peak_tflops * 1e12):.1%} |"
        print(line)


if __name__ == "__main__":
    main()
