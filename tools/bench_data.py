#!/usr/bin/env python
"""Benchmark prompt-data loading at scale: per-rank memory and start-up time, before and after.

Writes a synthetic parquet of --rows prompts, each with one embedded ~100 KB PNG (EasyR1-style
``images`` as ``{"bytes", "path"}``; 64 distinct noise images cycled, stored without dictionary
encoding or compression so every row holds its own bytes), then on --nproc local gloo ranks loads it
the way a trainer does, with the tiny Qwen2.5-VL processor filtering prompts by length, and builds
the first rollout batch (this rank's share of --prompts prompts, images decoded):

- ``before``: the loader of commit BASELINE_COMMIT (read from git): rank 0 reads the whole file into
  memory with HF datasets, runs the processor over every row alone, and pickles every row — embedded
  images included — to every rank;
- ``after``: ``load_prompt_rows`` now: rank 0 indexes the file into a memory-mapped Arrow file, every
  rank checks its share of the rows, both cached next to the data; run twice (a cold start, then a
  second start that finds the caches).

Per rank: seconds to the first rollout batch, resident memory the loaded data set adds (VmRSS after
minus before loading; anonymous and file-backed parts) and the peak (VmHWM minus before).

    .venv/bin/python tools/bench_data.py [--rows 37000] [--baseline-rows 37000] [--nproc 2] [--prompts 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASELINE_COMMIT = "2a0406d"
"""The last commit whose loader read every row (and its images) into memory on rank 0."""
POOL = 64
"""Distinct images cycled over the rows."""


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _mapped_index() -> int:
    """Resident bytes of this process's mappings of index files (``*.arrow``), from smaps."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            current = len(head) >= 6 and head[-1].endswith(".arrow")
        elif current and head and head[0] == "Rss:":
            total += int(head[1]) * 1024
    return total


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def write_data(path: Path, rows: int) -> Path:
    """The synthetic parquet (kept between runs: it depends only on `rows`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(POOL):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (182, 182, 3), dtype=np.uint8)).save(buf, format="PNG")
        pool.append(buf.getvalue())
    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    schema = pa.schema(
        [("id", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("images", image_type)]
    )
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema, use_dictionary=False, compression="none") as writer:
        for start in range(0, rows, 256):
            ids = range(start, min(rows, start + 256))
            table = pa.table(
                {
                    "id": [f"p{i}" for i in ids],
                    "question": [f"How many shapes are in image {i}? " * (1 + i % 5) for i in ids],
                    "answer": [str(i % 10) for i in ids],
                    "images": [[{"bytes": pool[i % POOL], "path": None}] for i in ids],
                },
                schema=schema,
            )
            writer.write_table(table)
    tmp.rename(path)
    return path


def _baseline_module(repo: Path) -> Any:
    """The rl_dataset module of BASELINE_COMMIT, imported from its source."""
    src = subprocess.run(
        ["git", "-C", str(repo), "show", f"{BASELINE_COMMIT}:srpo_mcore/data/rl_dataset.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="srpo-baseline-")) / "baseline_rl_dataset.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_rl_dataset", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its rows are unpickled on the other ranks by this name
    spec.loader.exec_module(module)
    return module


def _worker(impl: str, data: str, model: str, cache: str, prompts: int, repo: str) -> dict[str, float]:
    import torch.distributed as dist
    from transformers import AutoProcessor

    from srpo_mcore.config import DataConfig
    from srpo_mcore.data.prompt_sampler import PromptSampler
    from srpo_mcore.data.rl_dataset import load_prompt_rows, to_request

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    processor = AutoProcessor.from_pretrained(model)
    baseline = _baseline_module(Path(repo)) if impl == "before" else None
    cfg = DataConfig(train_files=[data], cache_dir=cache, max_prompt_tokens=1024)
    dist.barrier()
    _reset_hwm()
    before = _status()
    t0 = time.perf_counter()
    if baseline is not None:  # the trainer of BASELINE_COMMIT: rank 0 loads, then every row to every rank
        box: list[Any] = [None]
        if rank == 0:
            box = [baseline.load_prompt_rows(cfg, progress=False, processor=processor)[0]]
        dist.broadcast_object_list(box, src=0)
        rows = box[0]
    else:
        rows, _ = load_prompt_rows(cfg, progress=False, processor=processor)
    loaded = time.perf_counter() - t0
    mine = PromptSampler(len(rows), seed=0).next(prompts)[rank::world]
    build = baseline.to_request if baseline is not None else to_request
    requests = [build(rows[i], processor.tokenizer, cfg.prompt) for i in mine]
    assert all(r.images for r in requests)
    dist.barrier()
    first = time.perf_counter() - t0
    after = _status()
    dist.destroy_process_group()
    return {
        "rows": float(len(rows)),
        "loaded_s": loaded,
        "first_s": first,
        "rss": float(after["VmRSS"] - before["VmRSS"]),
        "anon": float(after["RssAnon"] - before["RssAnon"]),
        "file": float(after["RssFile"] - before["RssFile"]),
        "peak": float(after["VmHWM"] - before["VmRSS"]),
        "index": float(_mapped_index()),
    }


def main() -> int:
    from srpo_mcore.parallel.launch import spawn
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=37_000, help="rows of the synthetic set for the new loader")
    p.add_argument("--baseline-rows", type=int, default=37_000, help="rows for the baseline loader (0: skip it)")
    p.add_argument("--nproc", type=int, default=2, help="ranks")
    p.add_argument("--prompts", type=int, default=128, help="prompts of the first rollout batch (all ranks)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "srpo-bench-data"))
    args = p.parse_args()
    repo = Path(__file__).resolve().parents[1]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(build_tiny_checkpoint("gqa"))
    runs: list[tuple[str, int, str]] = []
    if args.baseline_rows:
        runs.append(("before", args.baseline_rows, "no cache"))
    runs += [("after", args.rows, "cold (no cache)"), ("after", args.rows, "second start")]
    results = []
    for impl, rows, start in runs:
        data = write_data(work / f"prompts-{rows}.parquet", rows)
        cache = work / f"cache-{rows}"
        if start.startswith("cold"):
            shutil.rmtree(cache, ignore_errors=True)
        print(f"{impl} / {rows} rows / {start} ...", file=sys.stderr, flush=True)
        per_rank = spawn(_worker, args.nproc, impl, str(data), model, str(cache), args.prompts, str(repo))
        results.append((impl, rows, start, data.stat().st_size, per_rank))
    mb = 1 << 20
    print(f"\nprompt data: {args.nproc} gloo ranks, tiny Qwen2.5-VL processor, first batch {args.prompts} prompts\n")
    print(
        "| loader | rows | file | start | kept | to first batch (s) | RSS added per rank (MB): total / anon / file "
        "| of which index pages (MB) | peak added (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for impl, rows, start, size, per_rank in results:
        rss = " ; ".join(f"{r['rss'] / mb:.0f} / {r['anon'] / mb:.0f} / {r['file'] / mb:.0f}" for r in per_rank)
        peak = " ; ".join(f"{r['peak'] / mb:.0f}" for r in per_rank)
        index = " ; ".join(f"{r['index'] / mb:.0f}" for r in per_rank)
        first = max(r["first_s"] for r in per_rank)
        print(
            f"| {impl} | {rows} | {size / mb / 1024:.2f} GB | {start} | {per_rank[0]['rows']:.0f} | {first:.1f} "
            f"| {rss} | {index} | {peak} |"
        )
    print("\nPer-rank columns list the ranks in order (rank 0 ; rank 1 ; ...). File-backed RSS is code pages of")
    print("libraries run for the first time plus the mapped index's pages (its own column): those are shared by the")
    print("ranks of a node and dropped by the kernel under memory pressure.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
