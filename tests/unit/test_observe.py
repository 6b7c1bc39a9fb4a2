"""Run observability: metrics.jsonl durability and rewind, wandb offline resume, PNG plots, rank-0 logging."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srpo_mcore.config import LoggingConfig
from srpo_mcore.observe import metrics_log as metrics_log_mod
from srpo_mcore.observe.metrics_log import METRICS_FILE, MetricsLog
from srpo_mcore.observe.plots import PANELS, plot_comparison, write_plots
from srpo_mcore.observe.rank0_log import get_logger
from srpo_mcore.observe.wandb_run import ID_FILE, WandbRun, resolve_mode

# --------------------------------------------------------------------------------------------
# MetricsLog
# --------------------------------------------------------------------------------------------


def test_metrics_log_appends_one_line_per_step_and_reads_back(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run")
    log.log(1, {"reward/total_mean": 0.5, "train/lr": 1e-6})
    log.log(2, {"reward/total_mean": 0.75, "grpo/groups_total": 8})
    log.log(3, {"reward/total_mean": np.float32(0.25), "flag": True})

    text = (tmp_path / "run" / METRICS_FILE).read_text()
    assert text.endswith("\n") and text.count("\n") == 3
    assert [json.loads(line)["step"] for line in text.splitlines()] == [1, 2, 3]
    assert MetricsLog.read(tmp_path / "run") == [
        {"step": 1, "reward/total_mean": 0.5, "train/lr": 1e-6},
        {"step": 2, "reward/total_mean": 0.75, "grpo/groups_total": 8.0},
        {"step": 3, "reward/total_mean": 0.25, "flag": 1.0},
    ]
    # A second writer (a resumed process) keeps appending to the same file.
    MetricsLog(tmp_path / "run").log(4, {"reward/total_mean": 1.0})
    assert [r["step"] for r in MetricsLog.read(tmp_path / "run")] == [1, 2, 3, 4]


def test_lines_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    child = (
        "import os, signal, sys\n"
        "from srpo_mcore.observe.metrics_log import MetricsLog\n"
        "log = MetricsLog(sys.argv[1])\n"
        "for step in range(1, 4):\n"
        "    log.log(step, {'a': step * 0.5})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert MetricsLog.read(tmp_path) == [{"step": s, "a": s * 0.5} for s in (1, 2, 3)]


def test_metrics_log_rejects_reserved_step_and_non_numbers(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        log.log(1, {"step": 3.0})
    with pytest.raises(TypeError, match="'name'"):
        log.log(1, {"name": "not a number"})
    assert MetricsLog.read(tmp_path) == []


def test_read_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert MetricsLog.read(tmp_path / "nothing-here") == []


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    MetricsLog(tmp_path).log(
        7, {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "npnan": np.float64("nan"), "none": None, "ok": 1.5}
    )
    raw = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in raw and "Infinity" not in raw

    def reject(token: str) -> float:
        raise AssertionError(f"non-JSON token {token} in metrics.jsonl")

    record = json.loads(raw, parse_constant=reject)
    assert record == {"step": 7, "nan": None, "inf": None, "ninf": None, "npnan": None, "none": None, "ok": 1.5}


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "rank1"
    log = MetricsLog(run_dir, enabled=False)
    log.log(1, {"a": 1.0})
    assert log.truncate_after(0) == 0
    assert not run_dir.exists()


def _write_torn(path: Path, fragment: str) -> None:
    with open(path, "a") as f:
        f.write(fragment)


def test_torn_last_line_is_tolerated_by_read_and_dropped_by_truncate_after(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.log(1, {"a": 1.0})
    log.log(2, {"a": 2.0})
    _write_torn(tmp_path / METRICS_FILE, '{"step":3,"a":3.')  # a kill mid-write
    assert [r["step"] for r in MetricsLog.read(tmp_path)] == [1, 2]

    assert log.truncate_after(100) == 1  # nothing past step 100, but the torn line goes
    text = (tmp_path / METRICS_FILE).read_text()
    assert text.endswith("\n") and text.count("\n") == 2
    assert [r["step"] for r in MetricsLog.read(tmp_path)] == [1, 2]

    # A complete JSON object without its newline is still torn (the newline is the commit marker).
    _write_torn(tmp_path / METRICS_FILE, '{"step":3,"a":3.0}')
    assert [r["step"] for r in MetricsLog.read(tmp_path)] == [1, 2]


def test_new_writer_cuts_a_torn_tail_so_appends_stay_parseable(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.log(1, {"a": 1.0})
    _write_torn(tmp_path / METRICS_FILE, '{"step":2,"a"')
    MetricsLog(tmp_path).log(2, {"a": 2.5})
    assert MetricsLog.read(tmp_path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.5}]

    # A file that is nothing but a torn line is emptied.
    (tmp_path / METRICS_FILE).write_text('{"step":1')
    MetricsLog(tmp_path)
    assert (tmp_path / METRICS_FILE).read_bytes() == b""


def test_corrupt_middle_line_raises(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"step":1}\nnot json\n{"step":3}\n')
    with pytest.raises(ValueError, match=r":2: corrupt"):
        MetricsLog.read(tmp_path)


def test_truncate_after_keeps_steps_up_to_n_exactly_via_atomic_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = MetricsLog(tmp_path)
    for step in range(1, 11):
        log.log(step, {"a": step / 10})
    path = tmp_path / METRICS_FILE
    before_lines = path.read_text().splitlines()
    before_inode = path.stat().st_ino

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str | os.PathLike[str]) -> None:
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(metrics_log_mod.os, "replace", spy)
    assert log.truncate_after(6) == 4

    assert len(replaced) == 1
    src, dst = replaced[0]
    assert Path(src).parent == tmp_path and Path(dst) == path
    assert path.stat().st_ino != before_inode  # a new file took its place; nothing was edited in place
    assert path.read_text().splitlines() == before_lines[:6]  # kept lines byte for byte
    assert [r["step"] for r in MetricsLog.read(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]  # no temp file left behind

    # Appends after the rewind go to the new file, and rewinding to a later step changes nothing.
    log.log(7, {"a": 0.0})
    assert log.truncate_after(7) == 0
    assert [r["step"] for r in MetricsLog.read(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert log.truncate_after(0) == 7 and MetricsLog.read(tmp_path) == []


def test_failed_truncate_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = MetricsLog(tmp_path)
    for step in range(1, 5):
        log.log(step, {"a": 1.0})
    before = (tmp_path / METRICS_FILE).read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(metrics_log_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        log.truncate_after(2)
    assert (tmp_path / METRICS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


# --------------------------------------------------------------------------------------------
# WandbRun
# --------------------------------------------------------------------------------------------


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin wandb offline and keep its config/cache files out of $HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def test_wandb_offline_writes_under_run_dir_and_resume_reuses_the_id(tmp_path: Path, wandb_offline: None) -> None:
    run_dir = tmp_path / "run"
    cfg = LoggingConfig(wandb_mode="offline", wandb_project="srpo-test")

    first = WandbRun(run_dir, cfg, name="tiny", config={"grpo": {"group_size": 4}})
    assert first.active and first.run_id is not None
    assert (run_dir / ID_FILE).read_text().strip() == first.run_id
    first.log(1, {"reward/total_mean": 0.5, "train/kl_ref": None})
    first.finish()
    first.finish()  # idempotent
    assert not first.active
    runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{first.run_id}"))
    assert len(runs) == 1 and (runs[0] / f"run-{first.run_id}.wandb").is_file()

    second = WandbRun(run_dir, cfg, name="tiny", config={"grpo": {"group_size": 4}})
    assert second.active and second.run_id == first.run_id
    second.log(2, {"reward/total_mean": 0.75})
    second.finish()
    # wandb keeps one offline directory per process (a "-1" suffix when two start in the same second),
    # each recording the same run id; `wandb sync` joins them into one run.
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all((p / f"run-{first.run_id}.wandb").is_file() for p in runs)

    # Non-zero ranks create nothing.
    other = WandbRun(tmp_path / "rank1", cfg, name="tiny", enabled=False)
    assert not other.active and not (tmp_path / "rank1").exists()
    other.log(1, {"a": 1.0})
    other.finish()


def test_wandb_failure_is_a_warning_not_a_crash(
    tmp_path: Path, wandb_offline: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    def broken_init(**kwargs: object) -> None:
        raise RuntimeError("no wandb today")

    monkeypatch.setattr(wandb, "init", broken_init)
    handler = get_logger("srpo_mcore.observe.wandb_run").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        run = WandbRun(tmp_path, LoggingConfig(wandb_mode="offline"), name="x")
    finally:
        handler.setStream(old)
    assert not run.active
    assert "no wandb today" in stream.getvalue() and "WARNING" in stream.getvalue()
    run.log(1, {"a": 1.0})
    run.finish()


def test_wandb_mode_env_overrides_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("online") == "disabled"
    run = WandbRun(tmp_path, LoggingConfig(wandb_mode="online"), name="x")
    assert not run.active and not (tmp_path / ID_FILE).exists()
    monkeypatch.setenv("WANDB_MODE", "bogus")
    assert resolve_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="wandb mode"):
        resolve_mode("sometimes")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _synthetic_records(n: int = 20) -> list[dict[str, float | int | None]]:
    records: list[dict[str, float | int | None]] = []
    for step in range(1, n + 1):
        records.append(
            {
                "step": step,
                "reward/total_mean": 0.2 + step / 50,
                "reward/accuracy_mean": None if step % 5 == 0 else step / 40,  # gaps are skipped
                "reward/right_right_rate": 0.5,
                "reward/wrong_right_rate": 0.1 + step / 200,
                "rollout/response_length_mean": 300.0 + step,
                "rollout/response_length_max": math.nan if step == 3 else 900.0,
                "time/step_s": 12.0,
                "grpo/groups_kept_fraction": None,  # present but never finite → panel skipped
                "not/a_panel_key": 1.0,
            }
        )
    return records


def _assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.size[0] > 100 and img.size[1] > 100
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 5  # not blank


def test_write_plots_draws_panels_with_data_and_skips_the_rest(tmp_path: Path) -> None:
    written = write_plots(tmp_path, _synthetic_records())
    expected = ["reward", "transitions", "response_length", "time"]
    assert [p.name for p in written] == [f"{name}.png" for name in expected]
    for path in written:
        assert path.parent == tmp_path / "plots"
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{n}.png" for n in expected)
    assert not (tmp_path / "plots" / "filter.png").exists()
    assert not (tmp_path / "plots" / "throughput.png").exists()


def test_write_plots_reads_metrics_jsonl_when_no_records_given(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for record in _synthetic_records(5):
        step = int(record.pop("step") or 0)
        log.log(step, record)
    assert [p.name for p in write_plots(tmp_path)] == [
        "reward.png",
        "transitions.png",
        "response_length.png",
        "time.png",
    ]
    assert write_plots(tmp_path / "empty") == []


def test_panel_table_is_well_formed() -> None:
    names = [panel.name for panel in PANELS]
    keys = [key for panel in PANELS for key in panel.keys]
    assert len(set(names)) == len(names) and len(set(keys)) == len(keys)
    assert "reward/wrong_right_rate" in keys and "time/step_s" in keys


def test_plot_comparison_writes_bar_and_line_pngs(tmp_path: Path) -> None:
    series = {"before": [0.41, 0.30, None], "after": [0.47, 0.35, 0.2]}
    bar = plot_comparison(tmp_path / "report" / "acc.png", series, "Accuracy", "accuracy", categories=["A", "B", "C"])
    line = plot_comparison(tmp_path / "acc_line.png", series, "Accuracy", "accuracy", kind="line")
    for path in (bar, line):
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["acc.png"]
    with pytest.raises(ValueError, match="at least one"):
        plot_comparison(tmp_path / "x.png", {}, "t", "y")
    with pytest.raises(ValueError, match="categories"):
        plot_comparison(tmp_path / "x.png", series, "t", "y", categories=["A"])


# --------------------------------------------------------------------------------------------
# rank-0 logging
# --------------------------------------------------------------------------------------------


def test_rank0_logger_prints_info_on_rank0_and_only_tagged_warnings_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = get_logger("srpo_mcore.test_observe")
    assert get_logger("srpo_mcore.test_observe") is logger and len(logger.handlers) == 1
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        monkeypatch.setenv("RANK", "0")
        logger.info("hello from zero")
        monkeypatch.setenv("RANK", "3")
        logger.info("hello from three")
        logger.warning("careful")
    finally:
        handler.setStream(old)
    out = stream.getvalue().splitlines()
    assert len(out) == 2
    assert "INFO" in out[0] and out[0].endswith("srpo_mcore.test_observe: hello from zero")
    assert "WARNING [rank 3] srpo_mcore.test_observe: careful" in out[1]
