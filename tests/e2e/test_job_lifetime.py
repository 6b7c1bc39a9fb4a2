"""A job's processes live and die together, and a run directory has one writer (torchrun, 2 ranks).

One SFT job under torchrun (the trainers share this machinery: ``trainer_core.run_cli``):

- a second trainer started on the live run directory exits non-zero within 10 s naming the holder
  (its pid, host, command), and the first run's files are untouched;
- SIGKILL of torchrun's process group (not of each worker): no process of the job is alive 10 s later;
- the lock the killed job held does not block the next start, which resumes;
- SIGKILL of one rank: the job exits with an error within ``parallel.timeout_s``.

The kill/resume loop with bitwise-equal metrics is ``tools/kill_resume.py`` (its pieces are used here).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "tools" / "kill_resume.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    tool = _tool()
    out = tmp_path_factory.mktemp("lifetime")
    recipe, module = tool.build_recipe("sft", out, steps=400, nproc=2)  # long enough to stay alive
    recipe["parallel"]["timeout_s"] = 30
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return {"tool": tool, "recipe": path, "module": module, "run_dir": Path(recipe["output_dir"]) / recipe["name"]}


def test_one_writer_and_the_job_dies_together(job) -> None:
    tool, run_dir = job["tool"], job["run_dir"]
    cmd = tool.command(job["recipe"], job["module"], 2)
    log = run_dir.parent / "first.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    first = tool.start(cmd, log)
    try:
        _wait(lambda: (run_dir / "checkpoints" / "latest").exists(), 300, "the first checkpoint", first)
        lock = json.loads((run_dir / ".lock").read_text())
        workers = [p for p in tool.job_processes(first) if p.pid != first.pid]
        assert lock["pid"] in [p.pid for p in workers], "rank 0 holds the lock"
        config_before = ((run_dir / "config.yaml").read_bytes(), (run_dir / "config.yaml").stat().st_mtime_ns)

        # A second trainer on the live directory refuses at once, naming the holder.
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", job["module"], "--config", str(job["recipe"])],
            cwd=ROOT, env=tool._env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        took = time.monotonic() - t0
        assert second.returncode != 0 and took < 10, (second.returncode, took, second.stderr[-2000:])
        assert f"is being written by the sft trainer (pid {lock['pid']} on {lock['host']}" in second.stderr
        assert json.loads((run_dir / ".lock").read_text()) == lock, "the refused trainer touched the lock"
        config_after = ((run_dir / "config.yaml").read_bytes(), (run_dir / "config.yaml").stat().st_mtime_ns)
        assert config_after == config_before, "the refused trainer rewrote the first run's config.yaml"
        assert first.poll() is None, "the first run must be unaffected"

        # SIGKILL of torchrun's process group: the workers (in sessions of their own) die with it.
        left, gone_after = tool.kill_job(first, wait_s=10)
        assert left == 0, f"{left} workers of the killed job still alive 10 s later"
        print(f"second writer refused in {took:.1f} s; workers gone {gone_after:.2f} s after the launcher's SIGKILL")
        assert not tool.checkpoint_problems(run_dir / "checkpoints")
    finally:
        if first.poll() is None:
            tool.kill_job(first)
    steps_before = len(tool.computed_metrics(run_dir))

    # The lock the killed job held does not block the next start; then SIGKILL of one rank ends the job.
    again = tool.start(tool.command(job["recipe"], job["module"], 2), run_dir.parent / "again.log")
    try:
        _wait(lambda: "resumed from" in (run_dir.parent / "again.log").read_text(), 300, "the resume", again)
        _wait(lambda: len(tool.computed_metrics(run_dir)) > steps_before, 120, "a step after the resume", again)
        workers = [
            p for p in tool.job_processes(again) if p.pid != again.pid and "srpo_mcore.sft" in " ".join(p.cmdline())
        ]
        rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
        assert len(rank1) == 1, [p.cmdline() for p in workers]
        t0 = time.monotonic()
        rank1[0].send_signal(signal.SIGKILL)
        rc = again.wait(timeout=30 + 30)
        took = time.monotonic() - t0
        assert rc != 0 and took <= 30, (rc, took)
        print(f"SIGKILL of rank 1: the job exited with {rc} after {took:.1f} s")
        out = (run_dir.parent / "again.log").read_text()
        assert "Signal 9 (SIGKILL)" in out or "SIGKILL" in out, out[-3000:]
        _wait(lambda: not tool.alive(workers), 10, "the other rank to exit")
    finally:
        if again.poll() is None:
            tool.kill_job(again)
