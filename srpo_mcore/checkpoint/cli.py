"""Command lines of the checkpoint converters (tools/convert_*.py and the srpo-convert-* entry points)."""

from __future__ import annotations

import argparse
import sys
import time

from srpo_mcore.checkpoint.convert import ConversionError, hf_to_mcore, mcore_to_hf, pin_mmap_threshold, reshard_mcore
from srpo_mcore.run_lock import DirLocked

HF_TO_MCORE_DOC = """Convert an HF Qwen2.5-VL checkpoint into a Megatron-Core distributed checkpoint.

    python tools/convert_hf_to_mcore.py --hf-dir Qwen2.5-VL-7B-Instruct --out ckpt/7b-mcore --tp 4 --pp 1

One local process per TP x PP rank loads its shard (HF tensors are memory-mapped and read one
weight-map row at a time) and the ranks write the checkpoint together. Training loads it at this
or any other layout (resharding on load). The output appears only when complete; an existing
output is refused unless --force.
"""

MCORE_TO_HF_DOC = """Export a Megatron-Core checkpoint (from convert_hf_to_mcore.py or training) as an HF checkpoint.

    python tools/convert_mcore_to_hf.py --mcore-dir ckpt/7b-mcore --out Qwen2.5-VL-7B-srpo

Writes sharded safetensors + index, config.json, tokenizer, processor and chat template, loadable
by transformers and vLLM. --quantize fp8 writes the language model's linear weights in FP8 as
NVIDIA ModelOpt's HF export does (128x128 block scales, `fp8_pb_wo`; embeddings, LM head, norms,
vision tower and merger stay in the checkpoint's dtype), which vLLM serves on GPU. --tp/--pp load the checkpoint on that many local processes (faster for
large models; each holds only its shard). --reshard-tp/--reshard-pp instead write a Megatron
checkpoint at another layout.
"""


def hf_to_mcore_main(argv: list[str] | None = None) -> int:
    """Convert an HF Qwen2.5-VL checkpoint into a Megatron-Core distributed checkpoint."""
    parser = argparse.ArgumentParser(description=HF_TO_MCORE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="HF checkpoint directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="output directory of the Megatron checkpoint")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size to write (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to write (default 1)")
    parser.add_argument(
        "--vpp", type=int, default=None, help="virtual pipeline stages (not supported yet for Qwen2.5-VL)"
    )
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32", "fp16"], default="bf16", help="parameter dtype (default bf16)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    pin_mmap_threshold()  # this process converts and exits
    if args.vpp not in (None, 1):
        parser.error("--vpp: virtual pipeline stages are not implemented for Qwen2.5-VL yet")
    start = time.perf_counter()
    try:
        out = hf_to_mcore(args.hf_dir, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, force=args.force)
    except (ConversionError, FileNotFoundError, DirLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a rank failed: show its own last words
        print(f"error: conversion failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tp={args.tp}, pp={args.pp}, {args.dtype}) in {time.perf_counter() - start:.1f} s")
    return 0


def mcore_to_hf_main(argv: list[str] | None = None) -> int:
    """Export a Megatron-Core checkpoint (from convert_hf_to_mcore.py or training) as an HF checkpoint."""
    parser = argparse.ArgumentParser(description=MCORE_TO_HF_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mcore-dir", required=True, help="Megatron checkpoint directory (with srpo_mcore.json)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tp", type=int, default=1, help="processes along TP used to load (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="processes along PP used to load (default 1)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard (default 5 GB)")
    parser.add_argument("--reshard-tp", type=int, default=None, help="write a Megatron checkpoint at this TP instead")
    parser.add_argument("--reshard-pp", type=int, default=None, help="... and this PP")
    parser.add_argument("--quantize", choices=["fp8"], default=None, help="write FP8 linear weights (ModelOpt format)")
    parser.add_argument(
        "--fp8-scheme", choices=["block128"], default="block128", help="FP8 scales: one per 128x128 block (default)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    pin_mmap_threshold()  # this process converts and exits
    start = time.perf_counter()
    if args.quantize and (args.reshard_tp is not None or args.reshard_pp is not None):
        parser.error("--quantize writes an HF checkpoint; it does not combine with --reshard-tp/--reshard-pp")
    try:
        if args.reshard_tp is not None or args.reshard_pp is not None:
            out = reshard_mcore(
                args.mcore_dir, args.out, tp=args.reshard_tp or 1, pp=args.reshard_pp or 1, force=args.force
            )
        else:
            out = mcore_to_hf(
                args.mcore_dir,
                args.out,
                tp=args.tp,
                pp=args.pp,
                force=args.force,
                max_shard_bytes=int(args.max_shard_gb * 1e9),
                quantize=args.fp8_scheme if args.quantize else None,
            )
    except (ConversionError, FileNotFoundError, DirLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: conversion failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0
