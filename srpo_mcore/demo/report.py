"""The demo's report: ``report.md``, ``report.json`` and PNGs in the run directory.

Owns turning the stages' outputs into what a person reads: the SFT-vs-GRPO table on the held-out
test split (greedy accuracy of the final and first answer, format-valid rate, sampled mean reward
and its components, transition rates), the stage timings, and the pictures — loss curves of the two
SFT stages, the GRPO run's own panels (reward components, transition rates, format-valid rate,
test accuracy during training; drawn by ``observe.plots``) and a before/after bar chart.

Does not own any measurement (``measure``, the trainers) or the plotting primitives (``observe.plots``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srpo_mcore.observe.metrics_log import MetricsLog
from srpo_mcore.observe.plots import plot_comparison, write_plots

if TYPE_CHECKING:
    from srpo_mcore.demo.pipeline import DemoPipeline

ROWS = (
    ("greedy accuracy, final answer (%)", "greedy", "accuracy"),
    ("greedy accuracy, first answer (%)", "greedy", "first_accuracy"),
    ("greedy format-valid rate (%)", "greedy", "format_valid_rate"),
    ("sampled mean reward", "sampled", "total_mean"),
    ("sampled accuracy, final answer", "sampled", "last_accuracy"),
    ("sampled format-valid rate", "sampled", "format_valid_rate"),
    ("sampled R_format", "sampled", "format_mean"),
    ("sampled R_acc", "sampled", "accuracy_mean"),
    ("sampled I_eff", "sampled", "effect_mean"),
    ("sampled I_ref", "sampled", "reflection_mean"),
    ("sampled f_len", "sampled", "f_len_mean"),
    ("right -> right", "sampled", "right_right_rate"),
    ("wrong -> right", "sampled", "wrong_right_rate"),
    ("right -> wrong", "sampled", "right_wrong_rate"),
    ("wrong -> wrong", "sampled", "wrong_wrong_rate"),
)
"""Rows of the before/after table: (label, section of ``sampled.json``, key)."""


def _mean(records: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in records if isinstance(r.get(key), int | float)]
    return sum(values) / len(values) if values else float("nan")


def write_report(pipe: DemoPipeline) -> Path:
    """Write the report of a finished demo run; returns ``<run>/report.md``."""
    run = pipe.run_dir
    plots = run / "plots"
    sft, grpo = (json.loads(pipe.measured(s).read_text()) for s in ("sft", "grpo"))
    grpo_records = MetricsLog.read(run / "grpo")
    timings = json.loads(pipe.timings_path.read_text()) if pipe.timings_path.exists() else {}

    # Pictures: both SFT loss curves, the GRPO panels (copied from the trainer's run dir), before/after.
    losses = {s: [r.get("train/loss") for r in MetricsLog.read(run / s)] for s in ("instruct", "sft")}
    longest = max(len(v) for v in losses.values())
    plot_comparison(
        plots / "sft_loss.png",
        {"stage 0 (plain answers)": losses["instruct"], "stage 1 (reflection SFT)": losses["sft"]},
        "SFT loss (token mean over assistant tokens)",
        "loss",
        categories=[str(i + 1) for i in range(longest)],
        kind="line",
    )
    for png in write_plots(run / "grpo", grpo_records):
        shutil.copyfile(png, plots / f"grpo_{png.name}")
    keys = [("greedy", "accuracy", 0.01), ("greedy", "format_valid_rate", 0.01), ("sampled", "total_mean", 1.0),
            ("sampled", "last_accuracy", 1.0), ("sampled", "format_valid_rate", 1.0),
            ("sampled", "right_right_rate", 1.0), ("sampled", "right_wrong_rate", 1.0)]  # fmt: skip
    plot_comparison(
        plots / "before_after.png",
        {name: [m[sec][key] * scale for sec, key, scale in keys] for name, m in (("SFT", sft), ("SFT + GRPO", grpo))},
        "Held-out test split, SFT vs after GRPO (greedy; the rest over 8 samples per question)",
        "rate / reward",
        categories=["greedy acc", "greedy format", "reward", "accuracy", "format", "right->right", "right->wrong"],
    )

    k = min(5, len(grpo_records))
    summary = {
        "sft": sft,
        "grpo": grpo,
        "gain": {
            "greedy_accuracy": grpo["greedy"]["accuracy"] - sft["greedy"]["accuracy"],
            "sampled_reward": grpo["sampled"]["total_mean"] - sft["sampled"]["total_mean"],
            "sampled_accuracy": grpo["sampled"]["last_accuracy"] - sft["sampled"]["last_accuracy"],
        },
        "train_reward_first_steps": _mean(grpo_records[:k], "reward/total_mean"),
        "train_reward_last_steps": _mean(grpo_records[-k:], "reward/total_mean"),
        "timings": timings,
    }
    tmp = run / ".report.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run / "report.json")

    def cell(m: dict[str, Any], sec: str, key: str) -> str:
        v = m[sec].get(key)
        return "–" if v is None else f"{v:.3f}" if sec == "sampled" else f"{v:.1f}"

    lines = [
        f"# SRPO demo: {run.name}",
        "",
        "The whole SRPO pipeline on the synthetic visual task with a tiny Qwen2.5-VL on Megatron-Core "
        f"({pipe.cfg.nproc} processes): stage 0 (plain answers, a stand-in for the Instruct model), "
        "stage 1 (reflection set from the policy's own answers + template teacher, reflection SFT), "
        "stage 2 (GRPO with the reflection-aware reward through the colocated vLLM engine).",
        "",
        f"## Held-out test split ({sft['questions']} questions)",
        "",
        f"Greedy decoding (paper protocol: last `<answer>`); sampled: {sft['sampled']['samples_per_question']} "
        f"responses per question at temperature {sft['sampled']['temperature']}, the same seeds for both policies, "
        "scored with the training reward.",
        "",
        "| | SFT (stage 1) | SFT + GRPO (stage 2) |",
        "|---|---|---|",
        *(f"| {label} | {cell(sft, s, k_)} | {cell(grpo, s, k_)} |" for label, s, k_ in ROWS),
        "",
        "Greedy accuracy per task (%): "
        + ", ".join(
            f"{task} {sft['greedy']['categories'][task]:.1f} -> {grpo['greedy']['categories'].get(task, 0.0):.1f}"
            for task in sft["greedy"]["categories"]
        ),
        "",
        f"Training reward (mean over the first {k} vs last {k} GRPO steps): "
        f"{summary['train_reward_first_steps']:.3f} -> {summary['train_reward_last_steps']:.3f}",
        "",
        "![before/after](plots/before_after.png)",
        "",
        "## Training",
        "",
        "![SFT loss](plots/sft_loss.png)",
        "",
        *(f"![{png.stem}](plots/{png.name})" for png in sorted(plots.glob("grpo_*.png"))),
        "",
        "## Stages",
        "",
        "| stage | seconds | result |",
        "|---|---|---|",
        *(f"| {name} | {t['seconds']:.0f} | {t['result']} |" for name, t in timings.items()),
        "",
        f"Stage logs: `{run / 'logs'}`; recipes: `{run / 'recipes'}`; policies: `{run}/<stage>/hf`; "
        f"offline wandb runs: `{run}/<stage>/wandb` (`wandb sync` uploads them).",
        "",
    ]
    out = run / "report.md"
    tmp = run / ".report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    return out
