"""tools/bench_train.py: a reduced run agrees on the first GRPO step and prints both table rows.

Also checks the agreement rule itself (which first-step differences void the comparison).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tools" / "bench_train.py"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_disagreements_flags_each_quantity() -> None:
    bench = _bench_module()
    ref = {"loss": 0.5, "old_logprob": -6.0, "grad_norm": 2.0}
    assert bench.disagreements(ref, dict(ref), "fp32") == []
    assert bench.disagreements(ref, {**ref, "loss": 0.5 + 5e-5}, "fp32") == []
    for key, value in (("loss", 0.5 + 2e-4), ("old_logprob", -6.001), ("grad_norm", 2.01)):
        problems = bench.disagreements(ref, {**ref, key: value}, "fp32")
        assert len(problems) == 1, (key, problems)
    assert bench.disagreements(ref, {**ref, "grad_norm": 2.01}, "bf16") == []


def test_reduced_bench_agrees_and_prints_table() -> None:
    cmd = [sys.executable, str(BENCH), "--config", "gqa", "--batch", "4", "--prompt-len", "16", "--response-len", "48",
           "--micro-batch-tokens", "128", "--warmup", "1", "--steps", "1", "--dtype", "fp32", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    out = proc.stdout
    diffs, hf_values = {}, {}
    for name in ("loss", "mean old logprob", "grad norm"):
        m = re.search(rf"^  {name}\s+HF ([-+.\de]+)\s+ours ([-+.\de]+)\s+\|diff\| ([.\de+-]+)$", out, re.M)
        assert m, f"no agreement line for {name!r}:\n{out}"
        hf, ours, diff = (float(g) for g in m.groups())
        assert abs(abs(hf - ours) - diff) < 1e-6
        diffs[name], hf_values[name] = diff, hf
    assert diffs["loss"] <= 1e-4 and diffs["mean old logprob"] <= 1e-4, diffs
    assert abs(hf_values["loss"]) > 1e-3, "a zero first-step loss would make its agreement check vacuous"
    rows = {}
    for name in ("HF transformers", "srpo-mcore (Megatron-Core, local spec)"):
        m = re.search(
            rf"^\| {re.escape(name)}\s+\|\s+256 \|\s+([.\d]+) \|\s+(\d+) \|\s+(\d+) MiB \|\s+([.\d]+) \|$", out, re.M
        )
        assert m, f"no table row for {name!r}:\n{out}"
        step_s, tps, mem, ratio = (float(g) for g in m.groups())
        assert step_s > 0 and tps > 0 and mem > 100
        rows[name] = (tps, ratio)
    assert rows["HF transformers"][1] == 1.0
    hf_tps, (ours_tps, ours_ratio) = rows["HF transformers"][0], rows["srpo-mcore (Megatron-Core, local spec)"]
    assert abs(ours_ratio - ours_tps / hf_tps) < 0.02 + 0.01 * ours_ratio
