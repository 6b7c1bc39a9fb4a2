"""Loading prompt data under 2 ranks: rank 0 indexes, each rank checks half of the rows (prompt tokens
counted by the processor), every rank gets the rows a single process gets; a second start reuses
both caches and checks nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from dist_harness import run_distributed
from srpo_mcore.config import DataConfig


def _load(data: str, model: str, limit: int) -> tuple[list[Any], dict[str, list[str]], int, list[int]]:
    import torch.distributed as dist
    from transformers import AutoProcessor

    import srpo_mcore.data.rl_dataset as rl

    dist.init_process_group("gloo")
    checked = [0]
    real = rl.check_rows

    def counting(index: Any, rows: Any, *args: Any, **kw: Any) -> Any:  # a spy: counts, then runs the real checks
        checked[0] += len(rows)
        return real(index, rows, *args, **kw)

    rl.check_rows = counting
    try:
        processor = AutoProcessor.from_pretrained(model)
        rows, report = rl.load_prompt_rows(
            DataConfig(train_files=[data], max_prompt_tokens=limit), progress=False, processor=processor
        )
        out = [(r.id, r.question, r.answer, r.images) for r in rows]
        return out, report.skipped, checked[0], rows.prompt_tokens()
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_checks_and_get_the_rows_of_one_process(tmp_path: Path, tiny_checkpoint: Any) -> None:
    from transformers import AutoProcessor

    from srpo_mcore.data.rl_dataset import load_prompt_rows

    model = str(tiny_checkpoint("gqa"))
    rows = []
    for i in range(12):
        buf = io.BytesIO()
        Image.new("RGB", (28 * (1 + i % 4), 56), (i * 20, 0, 0)).save(buf, format="PNG")
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
        rows.append({"id": f"r{i}", "question": "q " * (i * 20) + "?", "answer": str(i), "images": [f"{i}.png"]})
    rows.append({"id": "r1", "question": "dup", "answer": "1", "images": []})
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    processor = AutoProcessor.from_pretrained(model)

    def single(limit: int) -> tuple[Any, Any]:  # computed afresh (a cache of its own), in one process
        cfg = DataConfig(train_files=[str(data)], max_prompt_tokens=limit, cache_dir=str(tmp_path / "solo"))
        return load_prompt_rows(cfg, progress=False, processor=processor)

    limit = sorted(single(10_000)[0].prompt_tokens())[6]
    first = run_distributed(_load, 2, str(data), model, limit)
    assert first[0][:2] == first[1][:2] and first[0][3] == first[1][3], "every rank gets the same rows"
    assert [c for *_, c, _ in first] == [6, 7], "13 rows to check (the duplicate too): 6 + 7"
    kept, skipped, _, tokens = first[0]
    assert skipped["duplicate_id"] == ["r1"] and len(skipped["too_long"]) == 5 and len(kept) == 7
    rows_1, report = single(limit)
    assert [(r.id, r.question, r.answer, r.images) for r in rows_1] == kept and report.skipped == skipped
    assert rows_1.prompt_tokens() == tokens and max(tokens) == limit
    again = run_distributed(_load, 2, str(data), model, limit)
    assert [c for *_, c, _ in again] == [0, 0], "the second start checks nothing"
    assert again[0][:2] == first[0][:2]
