"""PNG pictures of a run, drawn from ``metrics.jsonl`` into ``<run_dir>/plots/``.

Owns: the panel table (``PANELS``: which metric keys share a figure; adding a key is one line), drawing
one figure per panel with step on the x axis, and ``plot_comparison`` (grouped bars or lines, e.g.
benchmark accuracy before/after training) for reports to reuse. Every PNG is written to a temporary
sibling and renamed into place, so a viewer never sees half a picture.

Does not own: metric names or values (the trainer), reading the file format (``metrics_log``), or
deciding when to redraw (``LoggingConfig.plot_every``, used by the trainer).

Drawing goes through ``Figure`` + ``FigureCanvasAgg`` directly rather than pyplot: that is the Agg
backend chosen explicitly for these figures, without switching the process-wide pyplot backend or
keeping figures alive in pyplot's global registry.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from srpo_mcore.observe.metrics_log import MetricsLog

PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Panel:
    """One figure: the file stem, its title and y label, and the metric keys drawn as lines."""

    name: str
    title: str
    ylabel: str
    keys: tuple[str, ...]


PANELS: tuple[Panel, ...] = (
    Panel(
        "reward",
        "Reward (mean over samples)",
        "reward",
        (
            "reward/total_mean",
            "reward/format_mean",
            "reward/accuracy_mean",
            "reward/effect_mean",
            "reward/reflection_mean",
            "reward/f_len_mean",
        ),
    ),
    Panel(
        "transitions",
        "Answer transitions across reflection (first → last)",
        "fraction of samples",
        (
            "reward/right_right_rate",
            "reward/wrong_right_rate",
            "reward/right_wrong_rate",
            "reward/wrong_wrong_rate",
        ),
    ),
    Panel(
        "format_and_accuracy",
        "Format validity and accuracy",
        "fraction of samples",
        (
            "reward/format_valid_rate",
            "reward/first_accuracy",
            "reward/last_accuracy",
        ),
    ),
    Panel(
        "response_length",
        "Response length",
        "tokens",
        (
            "rollout/response_length_mean",
            "rollout/response_length_max",
        ),
    ),
    Panel(
        "policy",
        "Policy drift and entropy",
        "value",
        (
            "train/kl_ref",
            "train/approx_kl_old",
            "train/clip_fraction",
            "train/entropy",
        ),
    ),
    Panel(
        "optimizer",
        "Optimizer",
        "value",
        (
            "train/grad_norm",
            "train/lr",
            "train/loss",
        ),
    ),
    Panel(
        "logprob_gap",
        "Rollout vs trainer log-prob gap",
        "|Δ log p|",
        (
            "rollout/logprob_gap_max",
            "rollout/logprob_gap_mean",
        ),
    ),
    Panel(
        "rollout_mismatch",
        "Rollout vs trainer mismatch and its correction",
        "value",
        (
            "rollout/mismatch_kl",
            "grpo/correction_fraction",
        ),
    ),
    Panel(
        "is_ratio",
        "Ratio π_trainer / π_rollout over the step's tokens",
        "ratio",
        (
            "rollout/is_ratio_p01",
            "rollout/is_ratio_p50",
            "rollout/is_ratio_p99",
            "rollout/is_ratio_max",
        ),
    ),
    Panel(
        "time",
        "Wall time per step",
        "seconds",
        (
            "time/rollout_s",
            "time/reward_s",
            "time/train_s",
            "time/refit_s",
            "time/save_s",
            "time/step_s",
        ),
    ),
    Panel(
        "throughput",
        "Throughput",
        "tokens / s",
        (
            "perf/train_tokens_per_s",
            "perf/rollout_tokens_per_s",
        ),
    ),
    Panel(
        "filter",
        "GRPO group filter",
        "value",
        (
            "grpo/groups_kept_fraction",
            "grpo/groups_total",
        ),
    ),
)


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None for missing, null, NaN, inf or non-numbers."""
    if value is None or isinstance(value, str):
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return None
    return as_float if math.isfinite(as_float) else None


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric, skipping records where it is missing or not finite."""
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        value = _finite(record.get(key))
        if value is None or record.get("step") is None:
            continue
        steps.append(int(record["step"]))
        values.append(value)
    return steps, values


def _save_atomic(fig: Figure, out: Path) -> None:
    """Render `fig` as PNG into a temporary sibling of `out`, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig).print_png(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a plot is for everyone who can see the run
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_figure() -> Figure:
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_plots(run_dir: str | Path, records: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Draw every panel of ``PANELS`` that has data into ``<run_dir>/plots/<panel>.png``.

    A panel is skipped when none of its keys has a finite value in any record; within a panel, each
    key is one line and its missing/null/non-finite points are left out.

    Args:
        run_dir: The run directory.
        records: Metrics records (``{"step": int, key: value, ...}``); read from
            ``<run_dir>/metrics.jsonl`` when None.

    Returns:
        The PNG paths written, in ``PANELS`` order.
    """
    if records is None:
        records = MetricsLog.read(run_dir)
    out_dir = Path(run_dir) / PLOTS_DIR
    written: list[Path] = []
    for panel in PANELS:
        lines = [(key, *_series(records, key)) for key in panel.keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig = _new_figure()
        ax = fig.add_subplot()
        for key, steps, values in lines:
            ax.plot(steps, values, label=key, marker="o" if len(steps) <= 30 else None, markersize=3)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        out = out_dir / f"{panel.name}.png"
        _save_atomic(fig, out)
        written.append(out)
    return written


def plot_comparison(
    out_png: str | Path,
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    *,
    categories: Sequence[str] | None = None,
    kind: Literal["bar", "line"] = "bar",
) -> Path:
    """Draw a few named series side by side: grouped bars (default) or lines over shared categories.

    Example: ``plot_comparison(p, {"before": [0.41, 0.30], "after": [0.47, 0.35]}, "Accuracy",
    "accuracy", categories=["MathVista", "MathVerse"])``.

    Args:
        out_png: Where to write the PNG (parent directories are created; written atomically).
        series: Label to values; value ``i`` belongs to category ``i``. None/NaN values are not drawn.
        title: Figure title.
        ylabel: Y axis label.
        categories: Names of the x positions; defaults to ``0..n-1`` where n is the longest series.
        kind: ``"bar"`` for grouped bars with their values printed on top, ``"line"`` for lines.

    Returns:
        The path written.

    Raises:
        ValueError: If `series` is empty, or a series is longer than `categories`.
    """
    if not series:
        raise ValueError("plot_comparison needs at least one series")
    n = max(len(values) for values in series.values())
    labels = [str(c) for c in categories] if categories is not None else [str(i) for i in range(n)]
    if n > len(labels):
        raise ValueError(f"a series has {n} values but there are only {len(labels)} categories")
    fig = _new_figure()
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for s, (label, values) in enumerate(series.items()):
        points = [(i, v) for i, v in enumerate(_finite(v) for v in values) if v is not None]
        xs = [i for i, _ in points]
        ys = [v for _, v in points]
        if kind == "bar":
            offset = (s - (len(series) - 1) / 2) * width
            bars = ax.bar([x + offset for x in xs], ys, width=width, label=label)
            ax.bar_label(bars, fmt="%.3g", fontsize="x-small", padding=2)
        else:
            ax.plot(xs, ys, label=label, marker="o")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    out = Path(out_png)
    _save_atomic(fig, out)
    return out
