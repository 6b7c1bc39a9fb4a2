"""The sbatch machinery on a real single-node SLURM cluster (Debian slurmctld/slurmd/munge, no systemd).

- tiny run: ``sbatch examples/grpo_tiny_cpu.sh`` (srun -> examples/slurm/launch.sh -> torchrun, 2 CPU
  processes at TP=2) on the secret-number task with the format-warm tiny policy; the job completes
  with exit code 0 and leaves metrics for every step, a checkpoint and the exported HF model.
- requeue: the warning signal (USR1 to the batch shell, as ``#SBATCH --signal=B:USR1@T`` sends it)
  makes the trainers save and exit 0; the job requeues itself; the requeued attempt resumes from that
  checkpoint and finishes, with metrics for every step exactly once.

Each test starts and tears down its own cluster; teardown fails the test if any process is left.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_fixtures import ROOT, read_metrics, secret_task, warm_policy
from slurm_cluster import SlurmCluster, require_binaries, slurm_cluster

SCRIPT = "examples/grpo_tiny_cpu.sh"
RUN_NAME = "grpo-tiny-cpu"  # the recipe's name: run dir <OUTPUT_DIR>/grpo-tiny-cpu
# Small and fast: ~2 s per step on 2 CPU processes; no plots or wandb to keep the job short.
BASE = (
    "data.prompt=none data.prompts_per_step=8 rollout.n=4 rollout.max_tokens=32 rollout.max_model_len=256 "
    "logging.wandb_mode=disabled logging.plot_every=0"
)
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def policy(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    require_binaries()  # skip/fail before the (slow) warm-up when SLURM is missing
    root = tmp_path_factory.mktemp("slurm_policy")
    task = secret_task(root / "task")
    return {"task": task, "policy": warm_policy(Path(tiny_checkpoint("gqa")), root / "warm", task)}


def _submit(cluster: SlurmCluster, policy: dict[str, Path], out: Path, overrides: str) -> int:
    env = {
        "HF_DIR": str(policy["policy"]),
        "TRAIN_FILES": str(policy["task"]),
        "OUTPUT_DIR": str(out),
        "SRPO_OVERRIDES": f"{BASE} {overrides}",
    }
    return cluster.sbatch(f"--output={out}/batch.out", SCRIPT, env=env, cwd=ROOT)


def _outputs(out: Path, job_id: int) -> str:
    texts = [
        p.read_text(errors="replace")[-4000:] for p in [out / "batch.out", *sorted(out.glob("slurm-logs/*/*.log"))]
    ]
    return "\n".join(texts)


def _finish(cluster: SlurmCluster, job_id: int, out: Path, timeout: float) -> dict[str, str]:
    info = cluster.wait_state(job_id, DONE, timeout)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{_outputs(out, job_id)}"
    return info


def test_tiny_recipe_through_sbatch(tmp_path: Path, policy) -> None:
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    with slurm_cluster() as cluster:
        job_id = _submit(cluster, policy, out, "train.steps=2 train.save_every=0")
        info = _finish(cluster, job_id, out, timeout=300)
        assert info["Restarts"] == "0" and info["NumNodes"] == "1"
    run = out / RUN_NAME
    assert [m["step"] for m in read_metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert (run / "hf" / "model.safetensors").exists() and (run / "hf" / "config.json").exists()
    node_log = (out / "slurm-logs" / str(job_id) / "node-0.log").read_text()
    assert "--nnodes=1 --nproc_per_node=2" in node_log and "--rdzv_endpoint=localhost:" in node_log
    assert "world=2 tp=2" in node_log, node_log[-3000:]
    print(f"tiny sbatch run: {time.monotonic() - start:.1f} s including cluster start/stop")


def test_warning_signal_checkpoints_requeues_and_resumes(tmp_path: Path, policy) -> None:
    out = tmp_path / "out"
    out.mkdir()
    steps = 12
    run = out / RUN_NAME
    start = time.monotonic()
    with slurm_cluster() as cluster:
        job_id = _submit(cluster, policy, out, f"train.steps={steps} train.save_every=0 train.keep_last=5")
        deadline = time.monotonic() + 300
        while not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 2):
            info = cluster.job(job_id)
            assert info["JobState"] in {"PENDING", "RUNNING", "CONFIGURING"}, f"{info}\n{_outputs(out, job_id)}"
            assert time.monotonic() < deadline, f"no 2 steps logged within 300 s\n{_outputs(out, job_id)}"
            time.sleep(0.2)
        # What `#SBATCH --signal=B:USR1@T` does before the time limit, now.
        cluster.run("scancel", "--batch", "--signal=USR1", str(job_id))
        signalled = time.monotonic()
        deadline = signalled + 240
        while int(cluster.job(job_id).get("Restarts", "0")) < 1:
            assert time.monotonic() < deadline, f"not requeued\n{_outputs(out, job_id)}"
            time.sleep(0.2)
        requeued = time.monotonic()
        info = _finish(cluster, job_id, out, timeout=400)
        assert info["Restarts"] == "1", info
    node_log = (out / "slurm-logs" / str(job_id) / "node-0.log").read_text()
    batch_log = (out / "batch.out").read_text()
    # The signal stopped the first attempt with a checkpoint, before the end.
    saved = re.search(r"SIGTERM: saved at step (\d+)", node_log)
    assert saved, node_log[-4000:]
    stop_step = int(saved.group(1))
    assert 2 <= stop_step < steps
    assert f"checkpoints/step_{stop_step:06d}" in node_log
    assert (run / "checkpoints" / f"step_{stop_step:06d}" / "trainer_state.json").exists()
    assert "requeueing job" in batch_log and "attempt 1" in batch_log, batch_log
    # The requeued attempt resumed from that checkpoint and finished every step, each logged once.
    assert re.search(rf"resumed from \S*step_{stop_step:06d} at step {stop_step}\b", node_log), node_log[-4000:]
    assert [m["step"] for m in read_metrics(run)] == list(range(1, steps + 1))
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps:06d}"
    assert (run / "hf" / "model.safetensors").exists()
    print(
        f"requeue: stopped at step {stop_step}; signal->requeue {requeued - signalled:.1f} s; "
        f"total {time.monotonic() - start:.1f} s"
    )


def test_demo_through_sbatch(tmp_path: Path) -> None:
    """The README's main job as a SLURM job (examples/srpo_tiny_cpu.sh), shrunk to a few steps per stage:
    every stage runs inside the allocation (training stages under torchrun, 2 processes at TP=2) and
    the report is written."""
    out = tmp_path / "out"
    out.mkdir()
    small = (
        "data.n_instruct=32 data.n_pool=32 data.n_rl=32 data.n_test=6 reflection.size=16 policy=gqa "
        "instruct.train.episodes=1 sft.train.episodes=1 grpo.train.steps=2 grpo.train.eval_every=1 "
        "grpo.data.prompts_per_step=4 grpo.rollout.n=2 eval.samples=2 eval.max_tokens=32 "
        "grpo.rollout.max_tokens=32 reflection.max_tokens=16"
    )
    env = {
        "PYTHON": sys.executable,
        "OUTPUT_DIR": str(out),
        "DEMO_ARGS": " ".join(f"--set {kv}" for kv in small.split()),
    }
    start = time.monotonic()
    with slurm_cluster() as cluster:
        job_id = cluster.sbatch(f"--output={out}/batch.out", "examples/srpo_tiny_cpu.sh", env=env, cwd=ROOT)
        info = cluster.wait_state(job_id, DONE, 900)
        batch = (out / "batch.out").read_text(errors="replace")
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{batch[-4000:]}"
    run = out / "srpo-tiny-cpu"
    report = json.loads((run / "report.json").read_text())
    assert report["grpo"]["questions"] == 6 and (run / "report.md").exists()
    assert "[9/9] report" in batch and "SRPO demo finished" in batch, batch[-3000:]
    grpo_log = (run / "logs" / "grpo.log").read_text()
    assert "--nproc_per_node 2" in grpo_log and "world=2 tp=2" in grpo_log, grpo_log[-3000:]
    print(f"demo sbatch run: {time.monotonic() - start:.1f} s including cluster start/stop")
