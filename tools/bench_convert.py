#!/usr/bin/env python
"""Benchmark checkpoint conversion on a synthetic checkpoint with real Qwen2.5-VL-7B shapes.

Writes a random bf16 HF checkpoint (7B widths, vocabulary and vision width; fewer layers; >= 2 GB),
then times HF -> Megatron and Megatron -> HF against the limit of this machine: reading every
tensor of the same checkpoint with safetensors and writing it back out. Also reports the peak RSS
of the largest conversion process next to the largest tensor and the checkpoint size.

Page-cache write speed on a shared VM swings several-fold from one minute to the next, so every
measurement starts after ``os.sync()`` with only its input in the page cache (the other scratch
files are dropped from it with ``posix_fadvise``) and the three are interleaved ``--repeat``
times; the table shows the best time of each (the spread is printed too). The conversions are timed as library
calls from this process (at one rank they run in it; at more, spawned ranks import torch and
Megatron first, ~8 s on 2 cores).

    .venv/bin/python tools/bench_convert.py [--layers 2] [--vision-depth 4] [--tp 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def synthetic_checkpoint(out: Path, layers: int, vision_depth: int, shard_bytes: int = 2**30) -> tuple[int, int]:
    """Random bf16 tensors under every HF name of a 7B-shaped model; returns (bytes, largest tensor bytes)."""
    from safetensors.torch import save_file

    from srpo_mcore.models.qwen2_5_vl.config import PRESETS
    from srpo_mcore.models.qwen2_5_vl.weight_map import to_hf, weight_rows
    from srpo_mcore.tiny.checkpoints import tiny_processor

    base = PRESETS["7b"]
    arch = replace(
        base,
        text=replace(base.text, num_layers=layers),
        vision=replace(base.vision, depth=vision_depth, fullatt_block_indexes=(vision_depth - 1,)),
    )
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    held = total = largest = 0
    index: dict[str, str] = {}
    files = 0

    def flush() -> None:
        nonlocal files, shard, held
        files += 1
        name = f"model-{files:05d}.safetensors"
        save_file(shard, str(out / name))
        index.update(dict.fromkeys(shard, name))
        shard, held = {}, 0

    for row in weight_rows(arch):
        shapes = [t.shape for _, t in to_hf(row, _meta_full(row, arch), arch)]
        for name, shape in zip(row.hf, shapes):
            t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            shard[name] = t
            nbytes = t.numel() * 2
            held, total, largest = held + nbytes, total + nbytes, max(largest, nbytes)
            if held >= shard_bytes:
                flush()
    if shard:
        flush()
    import json

    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    arch.to_hf().to_json_file(str(out / "config.json"))
    tiny_processor().save_pretrained(out)
    return total, largest


def _meta_full(row, arch):  # type: ignore[no-untyped-def]
    """A meta tensor with the full Megatron shape of `row` (derived from the HF shapes by the map)."""
    t, v = arch.text, arch.vision
    h, f, d, g, n = t.hidden_size, t.ffn_hidden_size, t.head_dim, t.num_query_groups, t.num_attention_heads
    name = row.mcore
    shapes = {
        "word_embeddings.weight": (t.vocab_size, h),
        "output_layer.weight": (t.vocab_size, h),
        "final_layernorm.weight": (h,),
        "patch_embed.weight": (v.hidden_size, v.patch_dim),
        "merger.ln_q.weight": (v.hidden_size,),
        "merger.fc1.weight": (4 * v.hidden_size, 4 * v.hidden_size),
        "merger.fc1.bias": (4 * v.hidden_size,),
        "merger.fc2.weight": (v.out_hidden_size, 4 * v.hidden_size),
        "merger.fc2.bias": (v.out_hidden_size,),
    }
    for suffix, shape in shapes.items():
        if name.endswith(suffix):
            return torch.empty(shape, device="meta")
    vis = name.startswith("vision.")
    hh, ff, heads = (v.hidden_size, v.intermediate_size, v.num_heads) if vis else (h, f, n)
    dd = v.head_dim if vis else d
    qkv_out = 3 * hh if vis else (n + 2 * g) * d
    layer = {
        "input_layernorm.weight": (hh,),
        "pre_mlp_layernorm.weight": (hh,),
        "linear_qkv.weight": (qkv_out, hh),
        "linear_qkv.bias": (qkv_out,),
        "linear_proj.weight": (hh, heads * dd),
        "linear_proj.bias": (hh,),
        "linear_fc1.weight": (2 * ff, hh),
        "linear_fc1.bias": (2 * ff,),
        "linear_fc2.weight": (hh, ff),
        "linear_fc2.bias": (hh,),
    }
    for suffix, shape in layer.items():
        if name.endswith(suffix):
            return torch.empty(shape, device="meta")
    raise KeyError(name)


def only_cached(source: Path, root: Path) -> None:
    """Start a measurement alike for every path: everything written so far on disk, `source` (the
    input) in the page cache, nothing else under `root` (a 6 GB run would otherwise write its
    output while twice the checkpoint sits in the cache of a 24 GB machine, and pay for evicting
    it where the limit does not)."""
    os.sync()
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                if source in f.parents:
                    while os.read(fd, 64 * 2**20):
                        pass
                else:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def plain_copy(src: Path, dst: Path) -> float:
    """Seconds to read every tensor with safetensors and write it back out (the I/O limit)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dst.mkdir()
    start = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            tensors = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118
        save_file(tensors, str(dst / f.name))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--tp", type=int, default=1, help="ranks used by the conversions")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved measurements of each path (best counts)")
    args = parser.parse_args()

    from srpo_mcore.checkpoint.convert import hf_to_mcore, mcore_to_hf, pin_mmap_threshold

    pin_mmap_threshold()  # as the converter CLIs do (this process converts and exits)
    baseline = _rss()  # this process with torch and Megatron imported, before any tensor
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        start = time.perf_counter()
        total, largest = synthetic_checkpoint(root / "hf", args.layers, args.vision_depth)
        print(
            f"synthetic checkpoint: {total / 1e9:.2f} GB, largest tensor {largest / 1e9:.2f} GB ({time.perf_counter() - start:.0f} s to write)"
        )
        times: dict[str, list[float]] = {"limit": [], "h2m": [], "m2h": []}
        h2m_stats: dict[str, int] = {}
        m2h_stats: dict[str, int] = {}
        for _ in range(args.repeat):  # each output is deleted once measured (its page cache with it)
            only_cached(root / "hf", root)
            times["limit"].append(plain_copy(root / "hf", root / "copy"))
            shutil.rmtree(root / "copy")
            only_cached(root / "hf", root)
            start = time.perf_counter()
            hf_to_mcore(root / "hf", root / "mcore", tp=args.tp, dtype="bf16", stats=h2m_stats)
            times["h2m"].append(time.perf_counter() - start)
            only_cached(root / "mcore", root)
            start = time.perf_counter()
            mcore_to_hf(root / "mcore", root / "out", tp=args.tp, stats=m2h_stats)
            times["m2h"].append(time.perf_counter() - start)
            shutil.rmtree(root / "mcore")
            shutil.rmtree(root / "out")
        limit_s = min(times["limit"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n| {'path':<40} | {'GB/s':>6} | {'seconds':>8} | {'vs limit':>8} | {'all runs (s)':<18} |")
    print(f"|{'-' * 42}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 20}|")
    for name, key in (
        ("safetensors read + write (the limit)", "limit"),
        (f"HF -> Megatron (tp={args.tp})", "h2m"),
        (f"Megatron -> HF (tp={args.tp})", "m2h"),
    ):
        sec = min(times[key])
        runs = " ".join(f"{t:.1f}" for t in times[key])
        print(f"| {name:<40} | {total / sec / 1e9:>6.2f} | {sec:>8.1f} | {limit_s / sec:>8.0%} | {runs:<18} |")
    print(
        f"\npeak RSS of the largest rank process (VmHWM): HF->Megatron {h2m_stats['peak_rss_bytes'] / 1e9:.2f} GB, "
        f"Megatron->HF {m2h_stats['peak_rss_bytes'] / 1e9:.2f} GB; largest tensor {largest / 1e9:.2f} GB, "
        f"checkpoint {total / 1e9:.2f} GB; the process itself (imports) {baseline / 1e9:.2f} GB "
        f"({os.cpu_count()} cores, {args.tp} rank(s))"
    )
    print(
        f"Megatron->HF copied {m2h_stats.get('copied_bytes', 0) / 1e9:.2f} GB file to file (stored raw, not rearranged); "
        f"the rest was read and rewritten"
    )


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
