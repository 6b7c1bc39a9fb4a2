#!/usr/bin/env python
"""Rollout/trainer mismatch and its correction, measured: three GRPO runs side by side.

On the secret-number task (``srpo_mcore.tiny.secret_task``: the tiny learning task of the e2e
trainer tests; same data, seeds, steps and samples in every arm) the trainer keeps fp32 while the
engine serves

- ``no mismatch``: the trainer's weights exactly (``rollout.simulate_mismatch=none``);
- ``mismatch``: the weights as ``--precision`` serves them, no correction (``fp8``: quantised by
  ModelOpt, ``rollout.precision=fp8`` with ``--fp8-scheme``; ``fp4``/``bf16``: rounded,
  ``rollout.simulate_mismatch``);
- ``mismatch + <mode>``: the same rounding with ``grpo.rollout_correction=<mode>``.

Prints one table (mismatch KL, ratio quantiles, corrected-token fraction, reward and final-answer
accuracy over the first and last five steps) and writes ``<out>/mismatch_reward.png`` (mean reward
per step, smoothed, one line per arm) and ``<out>/mismatch_kl.png``.

    .venv/bin/python tools/bench_mismatch.py [--precision fp8|fp4|bf16] [--fp8-scheme block128|per_tensor] [--mode tis] [--steps 40] [--out DIR]

Each arm is ``python -m srpo_mcore.train`` in a subprocess (~2.5 min per 40 steps on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srpo_mcore.observe.metrics_log import MetricsLog  # noqa: E402
from srpo_mcore.observe.plots import plot_comparison  # noqa: E402
from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint  # noqa: E402
from srpo_mcore.tiny.secret_task import learning_recipe, secret_task, warm_policy  # noqa: E402


def _run(recipe: dict, work: Path) -> list[dict]:
    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_mcore.train", "--config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"arm {recipe['name']} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return MetricsLog.read(Path(recipe["output_dir"]) / recipe["name"])


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return sum(values) / max(len(values), 1)


def _smooth(values: list[float], span: int = 5) -> list[float]:
    out, acc = [], None
    alpha = 2.0 / (span + 1)
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["fp8", "fp4", "bf16"], default="fp8", help="simulated rollout precision")
    ap.add_argument("--fp8-scheme", choices=["block128", "per_tensor"], default="block128", help="rollout.fp8_scheme")
    ap.add_argument("--mode", default="tis", help="grpo.rollout_correction of the corrected arm")
    ap.add_argument("--cap", type=float, default=2.0, help="grpo.correction_cap")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_mismatch_"))
    work.mkdir(parents=True, exist_ok=True)
    task = secret_task(work / "task")
    print(f"[bench_mismatch] warm policy and task under {work}", flush=True)
    policy = warm_policy(build_tiny_checkpoint("gqa"), work / "warm", task, steps=200)
    served = (
        {"precision": "fp8", "fp8_scheme": args.fp8_scheme}
        if args.precision == "fp8"
        else {"simulate_mismatch": args.precision}
    )
    arms = {
        "no mismatch": {"rollout": {"simulate_mismatch": "none"}, "grpo": {"rollout_correction": "none"}},
        "mismatch": {"rollout": served, "grpo": {"rollout_correction": "none"}},
        f"mismatch + {args.mode}": {
            "rollout": served,
            "grpo": {"rollout_correction": args.mode, "correction_cap": args.cap},
        },
    }
    results: dict[str, list[dict]] = {}
    for i, (label, sections) in enumerate(arms.items()):
        recipe = learning_recipe(f"arm{i}", output_dir=work / "runs", policy=policy, task=task, steps=args.steps)
        for section, values in sections.items():
            recipe.setdefault(section, {}).update(values)
        print(f"[bench_mismatch] {label}: {args.steps} steps", flush=True)
        results[label] = _run(recipe, work)

    head = ("arm", "mismatch KL", "ratio p01", "p99", "max", "corrected", "reward first5", "reward last5", "acc last5")
    scheme = f" {args.fp8_scheme} (ModelOpt)" if args.precision == "fp8" else ""
    print(f"\nrollout precision simulated: {args.precision}{scheme} (trainer fp32); correction cap {args.cap}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, rows in results.items():
        first, last = rows[:5], rows[-5:]
        cells = [
            label,
            f"{_mean(rows, 'rollout/mismatch_kl'):.2e}",
            f"{_mean(rows, 'rollout/is_ratio_p01'):.3f}",
            f"{_mean(rows, 'rollout/is_ratio_p99'):.3f}",
            f"{max(r['rollout/is_ratio_max'] for r in rows if 'rollout/is_ratio_max' in r):.2f}",
            f"{_mean(rows, 'grpo/correction_fraction'):.4f}",
            f"{_mean(first, 'reward/total_mean'):.3f}",
            f"{_mean(last, 'reward/total_mean'):.3f}",
            f"{_mean(last, 'reward/last_accuracy'):.3f}",
        ]
        print("| " + " | ".join(cells) + " |")
    steps = [str(int(r["step"])) for r in next(iter(results.values()))]
    for key, name, title, ylabel in [
        ("reward/total_mean", "mismatch_reward", "Mean reward per step (EMA, span 5)", "reward"),
        ("rollout/mismatch_kl", "mismatch_kl", "Mismatch KL(rollout || trainer), k3 token mean", "KL"),
    ]:
        series: dict[str, list[float | None]] = {label: [r.get(key) for r in rows] for label, rows in results.items()}
        if key.startswith("reward/"):
            series = {label: list(_smooth([v or 0.0 for v in vals])) for label, vals in series.items()}
        png = plot_comparison(work / f"{name}.png", series, title, ylabel, categories=steps, kind="line")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
