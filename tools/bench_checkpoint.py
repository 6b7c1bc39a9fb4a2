#!/usr/bin/env python
"""Benchmark training-checkpoint formats: dp_reshardable vs fully_reshardable optimizer state.

Builds a Qwen2.5-VL-shaped model (random weights, fp32, the distributed optimizer with one Adam
update done so the moments are non-zero) on --nproc local gloo processes (DP = nproc, or TP with
--tp), saves it with ``TrainCheckpointer`` in each format and loads it back, --repeat times each,
interleaved; prints the best save and load time, the checkpoint size, and whether the loaded
weights and Adam moments equal the saved ones bitwise.

    .venv/bin/python tools/bench_checkpoint.py [--nproc 2] [--tp 1] [--hidden 1024] [--layers 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

FORMATS = ("dp_reshardable", "fully_reshardable")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _worker(root: str, tp: int, hidden: int, layers: int, repeat: int) -> dict:
    import torch.distributed as dist
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.train_state import TrainCheckpointer
    from srpo_mcore.config import OptimConfig
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch, TextArch, VisionArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.optim import build_optimizer, prepare_for_training

    init_parallel(ParallelDims(tp=tp))
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    torch.manual_seed(0)
    text = TextArch(
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden, num_attention_heads=hidden // 128,
        num_query_groups=max(1, hidden // 512), vocab_size=32768,
    )  # fmt: skip
    vision = VisionArch(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=hidden)
    arch = Qwen25VLArch(text=text, vision=vision)
    model = Qwen25VLModel(arch, ModelLayout(tp=tp))
    ocfg = OptimConfig(lr=1e-4, distributed_optimizer=True)
    ddp = prepare_for_training(model, ocfg)
    optimizer, _ = build_optimizer(ddp, ocfg, dtype="fp32", total_steps=2)
    for p in model.parameters():  # one update: non-zero moments
        if hasattr(p, "main_grad"):
            p.main_grad.copy_(torch.randn_like(p) * 1e-3)
    optimizer.step()
    params = sum(p.numel() for p in model.parameters())
    saved_weights = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    inner = optimizer.chained_optimizers[0].optimizer
    saved_moments = [inner.state[p]["exp_avg"].clone() for g in inner.param_groups for p in g["params"]]
    out: dict = {"params": params, "rows": {}}
    for fmt in FORMATS:
        out["rows"][fmt] = {"save": [], "load": [], "bytes": 0, "exact": True}
    for _ in range(repeat):
        for fmt in FORMATS:
            ckpt = TrainCheckpointer(Path(root) / fmt, keep_last=1, optimizer_format=fmt, layout={"tp": tp})
            dist.barrier()
            t0 = time.perf_counter()
            path = ckpt.save(1, model, optimizer, {"note": "bench"})
            dist.barrier()
            out["rows"][fmt]["save"].append(time.perf_counter() - t0)
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
            t0 = time.perf_counter()
            ckpt.load(path, model, optimizer)
            dist.barrier()
            out["rows"][fmt]["load"].append(time.perf_counter() - t0)
            weights = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
            moments = [inner.state[p]["exp_avg"] for g in inner.param_groups for p in g["params"]]
            exact = all(torch.equal(weights[k], saved_weights[k]) for k in saved_weights) and all(
                torch.equal(a, b) for a, b in zip(moments, saved_moments)
            )
            out["rows"][fmt]["exact"] &= exact
            if dist.get_rank() == 0:
                out["rows"][fmt]["bytes"] = _dir_bytes(path)
    destroy_parallel()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="local gloo processes (default 2)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (DP = nproc / tp)")
    p.add_argument("--hidden", type=int, default=1024, help="language model hidden size (default 1024)")
    p.add_argument("--layers", type=int, default=8, help="decoder layers (default 8)")
    p.add_argument("--repeat", type=int, default=3, help="saves and loads of each format (best shown)")
    a = p.parse_args(argv)
    from srpo_mcore.parallel.launch import spawn

    root = Path(tempfile.mkdtemp(prefix="bench_checkpoint-"))
    try:
        results = spawn(_worker, a.nproc, str(root), a.tp, a.hidden, a.layers, a.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r0 = results[0]
    dp = a.nproc // a.tp
    print(f"{r0['params'] / 1e6:.1f}M parameters per TP rank, fp32 + Adam; {a.nproc} processes: TP={a.tp} DP={dp}")
    print(f"{'optimizer format':<20} {'save s':>8} {'load s':>8} {'size MB':>9} {'loaded == saved':>16}  reshards at")
    where = {"dp_reshardable": "another DP only", "fully_reshardable": "any TP / PP / CP / DP"}
    for fmt in FORMATS:
        rows = [r["rows"][fmt] for r in results]
        save = min(max(r["save"][i] for r in rows) for i in range(a.repeat))
        load = min(max(r["load"][i] for r in rows) for i in range(a.repeat))
        exact = all(r["exact"] for r in rows)
        print(f"{fmt:<20} {save:>8.2f} {load:>8.2f} {rows[0]['bytes'] / 1e6:>9.1f} {exact!s:>16}  {where[fmt]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
