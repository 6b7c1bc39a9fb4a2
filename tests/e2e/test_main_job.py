"""The README's main job (today: the Megatron-Core smoke run) works under torchrun with 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "srpo_mcore.smoke", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_smoke_job_tp2_sp_learns() -> None:
    proc = _run("--config", "examples/tiny_cpu.yaml", "--steps", "20")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tp=2 sp=True dp=1" in proc.stdout
    assert "smoke: OK" in proc.stdout


def test_smoke_job_data_parallel() -> None:
    proc = _run("--set", "parallel.tp=1", "--set", "parallel.sequence_parallel=false", "--steps", "20")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tp=1 sp=False dp=2" in proc.stdout


def test_smoke_job_rejects_broken_recipe_by_field(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("parallel:\n  tp: 3\n")
    proc = _run("--config", str(recipe))
    assert proc.returncode != 0
    assert "parallel.tp=3 does not divide model.num_attention_heads=4" in proc.stderr
