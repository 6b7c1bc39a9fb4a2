"""SIGKILL a training job at random moments, resume it each time, and check that nothing is lost.

    .venv/bin/python tools/kill_resume.py --kills 20                 # SFT under torchrun, 2 processes
    .venv/bin/python tools/kill_resume.py --kills 5 --trainer grpo --nproc 1

Builds the tiny policy and the secret-number task under --out, runs the recipe once uninterrupted
(the reference), then runs the same recipe in a second run directory and SIGKILLs the whole job —
torchrun's process group, as ``kill -9`` of the launcher or an OOM kill does — at a moment drawn
uniformly from [0.8 x the reference's time to its first step, 1.05 x its wall time], restarting the same command after each kill,
until --kills kills have happened; then lets it finish. After every kill it checks that no process
of the job is alive 10 s later, that every visible checkpoint is complete and that ``latest`` names
one. At the end the killed run's per-step metrics (all but timings) must equal the reference's
bitwise. Prints one row per kill and a verdict; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from srpo_mcore.observe.metrics_log import MetricsLog
from srpo_mcore.parallel.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
_TIMING = ("time/", "perf/")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def build_recipe(trainer: str, out: Path, *, steps: int, nproc: int) -> tuple[dict, str]:
    """The recipe dict and the trainer module for `trainer` (``sft`` or ``grpo``) on the tiny task."""
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint
    from srpo_mcore.tiny.secret_task import learning_recipe, secret_task, srpo_response, warm_policy

    task = secret_task(out / "task", n=32)
    if trainer == "grpo":
        policy = out / "warm"
        if not (policy / "config.json").exists():
            warm_policy(build_tiny_checkpoint("gqa"), policy, task, steps=60)
        recipe = learning_recipe("run", output_dir=out / "runs", policy=policy, task=task, steps=steps)
        recipe["grpo"]["rollout_correction"] = "tis"
        module = "srpo_mcore.train"
    else:
        rows = [json.loads(line) for line in task.read_text().splitlines()]
        sft = out / "task" / "sft.jsonl"
        rng = random.Random(0)
        sft.write_text("".join(json.dumps({**r, "response": srpo_response(rng.randrange(10), 7)}) + "\n" for r in rows))
        recipe = {
            "name": "run",
            "seed": 1234,
            "output_dir": str(out / "runs"),
            "model": {"hf_dir": str(build_tiny_checkpoint("gqa")), "dtype": "fp32"},
            "data": {"train_files": [str(sft)], "answer_field": "response", "prompt": "srpo"},
            "sft": {"batch_size": 4},
            "optim": {"lr": 1.0e-3},
            "train": {"steps": steps, "micro_batch_tokens": 4096},
            "logging": {"wandb_mode": "offline", "plot_every": 0},
        }
        module = "srpo_mcore.sft"
    recipe.setdefault("train", {}).update(save_every=1, keep_last=2, export_hf_at_end=False)
    recipe.setdefault("parallel", {})["timeout_s"] = 60
    return recipe, module


def command(recipe_path: Path, module: str, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module, "--config", str(recipe_path)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*torchrun, "--master_port", str(free_port()), "-m", module, "--config", str(recipe_path)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start the job in a process group of its own (the group is what gets killed)."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def job_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The launcher and every process it started (workers live in sessions of their own)."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_job(proc: subprocess.Popen, wait_s: float = 10.0) -> tuple[int, float]:
    """SIGKILL the job's process group; returns (processes still alive after `wait_s`, seconds until none was)."""
    procs = job_processes(proc)
    t0 = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while time.monotonic() - t0 < wait_s:
        if not alive(procs):
            return 0, time.monotonic() - t0
        time.sleep(0.05)
    left = alive(procs)
    for p in left:  # leave nothing behind, whatever the verdict
        p.kill()
    return len(left), wait_s


def checkpoint_problems(ckpt_dir: Path) -> list[str]:
    """What is wrong with the visible checkpoints (empty: every one complete, ``latest`` valid)."""
    problems = []
    visible = sorted(ckpt_dir.glob("step_*"))
    for p in visible:
        if not ((p / "trainer_state.json").exists() and (p / "metadata.json").exists()):
            problems.append(f"{p.name} incomplete")
    latest = ckpt_dir / "latest"
    if latest.exists():
        name = latest.read_text().strip()
        if not (ckpt_dir / name / "trainer_state.json").exists():
            problems.append(f"latest names {name!r}, not a complete checkpoint")
    elif visible:
        problems.append("checkpoints without latest")
    return problems


def computed_metrics(run_dir: Path) -> list[dict]:
    """The run's per-step records without timings (a live run's torn last line is skipped)."""
    return [{k: v for k, v in r.items() if not k.startswith(_TIMING)} for r in MetricsLog.read(run_dir)]


def run_to_end(cmd: list[str], log: Path, timeout: float, run_dir: Path) -> tuple[float, float]:
    """Run to completion; returns (seconds until its first step was logged, seconds in all)."""
    t0 = time.monotonic()
    first = None
    proc = start(cmd, log)
    while proc.poll() is None:
        if first is None and computed_metrics(run_dir):
            first = time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            kill_job(proc)
            raise SystemExit(f"error: the run did not finish within {timeout:.0f} s (log: {log})")
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"error: the run exited with {proc.returncode} (log: {log})")
    total = time.monotonic() - t0
    return (first if first is not None else total), total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the whole job (default 20)")
    p.add_argument("--trainer", choices=("sft", "grpo"), default="sft")
    p.add_argument("--nproc", type=int, default=2, help="processes (torchrun when > 1; default 2)")
    p.add_argument("--steps", type=int, default=40, help="training steps of the run (a checkpoint every step)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--out", type=Path, default=Path("/tmp/srpo_kill_resume"), help="work directory (reused)")
    p.add_argument("--timeout", type=float, default=900, help="limit of one uninterrupted run (s)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    recipe, module = build_recipe(a.trainer, a.out, steps=a.steps, nproc=a.nproc)
    runs = Path(recipe["output_dir"])
    ref_recipe, killed_recipe = a.out / "reference.yaml", a.out / "killed.yaml"
    ref_recipe.write_text(yaml.safe_dump({**recipe, "name": "reference"}))
    killed_recipe.write_text(yaml.safe_dump({**recipe, "name": "killed"}))
    for name in ("reference", "killed"):
        shutil.rmtree(runs / name, ignore_errors=True)
    log = a.out / "killed.log"
    log.write_text("")
    print(f"reference: {a.trainer}, {a.steps} steps, nproc {a.nproc} ...", flush=True)
    first_s, ref_s = run_to_end(
        command(ref_recipe, module, a.nproc), a.out / "reference.log", a.timeout, runs / "reference"
    )
    reference = computed_metrics(runs / "reference")
    print(f"reference: {len(reference)} steps in {ref_s:.0f} s (first step after {first_s:.0f} s)", flush=True)

    rng = random.Random(a.seed)
    killed_dir = runs / "killed"
    rows, failures = [], []
    header = f"{'kill':>4} {'after s':>8} {'steps logged':>12} {'latest':>12} {'visible':>8} {'alive 10 s later':>16}  checkpoints"
    print(header)
    kills = completed = 0

    def compare() -> None:
        killed = computed_metrics(killed_dir)
        if [m["step"] for m in killed] != [m["step"] for m in reference]:
            failures.append(f"steps logged {[m['step'] for m in killed]} != {[m['step'] for m in reference]}")
            return
        for x, y in zip(killed, reference):
            if x != y:
                diff = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
                failures.append(f"step {x['step']}: metrics differ from the uninterrupted run ({', '.join(diff[:5])})")
                return

    while kills < a.kills and not failures:
        delay = rng.uniform(0.8 * first_s, 1.05 * ref_s)  # start-up, training, saves and the end alike
        proc = start(command(killed_recipe, module, a.nproc), log)
        t0 = time.monotonic()
        while time.monotonic() - t0 < delay and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            if proc.returncode != 0:
                failures.append(f"run exited with {proc.returncode} before kill {kills + 1} (log {log})")
                break
            compare()  # it finished before the kill moment: check it, then run it again for the next kills
            completed += 1
            shutil.rmtree(killed_dir)
            continue
        left, _ = kill_job(proc)
        kills += 1
        problems = checkpoint_problems(killed_dir / "checkpoints")
        latest = killed_dir / "checkpoints" / "latest"
        row = (
            f"{kills:>4} {time.monotonic() - t0:>8.1f} {len(computed_metrics(killed_dir)):>12} "
            f"{latest.read_text().strip() if latest.exists() else '-':>12} "
            f"{len(list((killed_dir / 'checkpoints').glob('step_*'))):>8} {left:>16}  {'; '.join(problems) or 'ok'}"
        )
        print(row, flush=True)
        rows.append(row)
        if left:
            failures.append(f"kill {kills}: {left} processes of the job alive 10 s after SIGKILL")
        failures += [f"kill {kills}: {x}" for x in problems]

    if not failures:  # the run of the last kill, resumed to its end
        run_to_end(command(killed_recipe, module, a.nproc), log, a.timeout, killed_dir)
        compare()
        completed += 1
    print()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(
        f"{kills} SIGKILLs of the whole job: every visible checkpoint complete, latest valid, no process alive "
        f"10 s after a kill; {completed} resumed run(s) to the end, each one's {len(reference)} per-step metrics "
        "equal to the uninterrupted run's bitwise."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
