"""The GRPO trainer end to end (``python -m srpo_mcore.train`` as users run it), on CPU.

- layouts: the same saved rollouts (replay mode; sampled by an engine serving fp4-rounded weights,
  trained with the ``tis`` rollout correction) trained at TP=1, TP=2, PP=2 and CP=2 for two steps
  give the same loss, mismatch metrics and updated weights (exported HF checkpoints) within 1e-5; with
  ``grpo.kl_coef > 0`` (reference model, TP=2) the k3 KL grows from ~0 and enters the loss. TP=2's
  step-1 checkpoint (fully_reshardable) resumed at TP=1 and at PP=2 gives the same step 2 and
  weights within the same bound; a dp_reshardable checkpoint (TP=2) refuses TP=1 with a clear message.
- resume: a run stopped by SIGTERM (saves, exits 0) or killed by SIGKILL and then resumed logs
  exactly the metrics of an uninterrupted run (bitwise, fixed seeds, real vLLM engine refitted from
  the restored weights); no checkpoint directory is ever incomplete.
- learning: on the secret-number task, the mean reward and the final-answer accuracy rise by stated
  margins over a short run; with the engine serving fp4-rounded weights (a real mismatch) and the
  ``tis`` correction, the run ends within ``MISMATCH_MARGIN`` of the exact engine's reward.
- resume and check mode run with the ``tis`` correction on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_fixtures import (
    ROOT,
    learning_recipe,
    read_metrics,
    run_train,
    secret_task,
    train_command,
    train_env,
    warm_policy,
    write_recipe,
)

# How far below the exact engine's mean reward (last 5 steps) the fp4-mismatched, tis-corrected run
# may end. Measured: see the note of the rollout-correction issue (tools/bench_mismatch.py).
MISMATCH_MARGIN = 0.08
# Keys that measure time, not the computation.
_TIMING = ("time/", "perf/")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("grpo")
    task = secret_task(root / "task")
    policy = warm_policy(Path(tiny_checkpoint("gqa")), root / "warm", task, steps=200)
    return {"root": root, "task": task, "policy": policy}


def _recipe(setup: dict, name: str, **sections) -> Path:
    recipe = learning_recipe(name, output_dir=setup["root"] / "runs", policy=setup["policy"], task=setup["task"])
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return write_recipe(setup["root"] / f"{name}.yaml", recipe)


def _computed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(_TIMING)} for r in records]


def test_layouts_equal_tp1(setup) -> None:
    import torch
    from safetensors.torch import load_file

    runs = setup["root"] / "runs"
    optim = {"lr": 5.0e-5}  # Adam's first steps move every weight by ~lr: keeps layout noise well under 1e-5
    train = {"steps": 2, "save_every": 0, "export_hf_at_end": True, "updates_per_step": 2}
    grpo = {"dynamic_sampling": True, "max_refill_rounds": 2, "rollout_correction": "tis"}
    # The engine serves fp4-rounded weights, so the saved rollout logprobs are not the trainer's and
    # every replay below weights its tokens by a real, varied correction ratio.
    source = {"save_rollouts": True, "simulate_mismatch": "fp4"}
    run_train(_recipe(setup, "source", rollout=source, optim=optim, train=train, grpo=grpo))
    for m in read_metrics(runs / "source"):  # dynamic sampling refilled the filtered groups (or gave up)
        assert m["grpo/groups_trained"] == 8 or m["grpo/refill_rounds"] == 2, m
    replay = {"replay_dir": str(runs / "source" / "rollouts")}
    grpo = {"rollout_correction": "tis", "correction_cap": 1.05}  # a low cap: some tokens are truncated
    layouts = {
        "tp1": ([], 1),
        "tp2": (["parallel.tp=2", "train.save_every=1"], 2),  # fully_reshardable checkpoints at steps 1 and 2
        "pp2": (["parallel.pp=2"], 2),
        "cp2": (["parallel.cp=2"], 2),
        # the frozen reference model, under TP; dp_reshardable checkpoints
        "tp2_kl": (["parallel.tp=2", "grpo.kl_coef=0.1", "checkpoint.optimizer_format=dp_reshardable"], 2),
    }
    for name, (overrides, nproc) in layouts.items():
        run_train(_recipe(setup, name, rollout=replay, train=train, optim=optim, grpo=grpo), overrides, nproc=nproc)
    # Resume at another layout: TP=2's step-1 checkpoint continues at TP=1 and at PP=2 for step 2.
    resumed_layouts = {"tp2_to_tp1": ([], 1), "tp2_to_pp2": (["parallel.pp=2"], 2)}
    for name, (overrides, nproc) in resumed_layouts.items():
        _continue_from(runs / "tp2", "step_000001", runs / name)
        out = run_train(
            _recipe(setup, name, rollout=replay, train=train, optim=optim, grpo=grpo), overrides, nproc=nproc
        )
        assert "resumed from" in out and "resumed at another layout" in out, out[-3000:]
        assert "not carried over exactly: per-rank torch RNG streams" in out
    # A dp_reshardable checkpoint (TP=2) refuses to resume at TP=1, saying what to do.
    _continue_from(runs / "tp2_kl", "step_000002", runs / "tp2_kl_to_tp1")
    more = {**train, "steps": 3}
    refused = subprocess.run(
        train_command(_recipe(setup, "tp2_kl_to_tp1", rollout=replay, optim=optim, grpo=grpo, train=more)),
        cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "dp_reshardable" in refused.stderr and "tp 2 -> 1" in refused.stderr, refused.stderr[-3000:]
    ref_metrics = read_metrics(runs / "tp1")
    assert all(m["rollout/mismatch_kl"] > 1e-5 for m in ref_metrics), "the replayed rollouts carry no mismatch"
    fractions = [m["grpo/correction_fraction"] for m in ref_metrics]
    assert max(fractions) > 0 and max(fractions) < 0.5, f"the correction must truncate some tokens: {fractions}"
    ref = load_file(runs / "tp1" / "hf" / "model.safetensors")
    init = load_file(Path(setup["policy"]) / "model.safetensors")
    moved = max((ref[k] - init[k]).abs().max().item() for k in ref)
    assert moved > 2e-5, f"the updates did not change the weights (max change {moved:.2e})"
    assert [m["train/loss"] for m in ref_metrics] != [0.0, 0.0], "replayed rollouts carry no learning signal"
    kl = read_metrics(runs / "tp2_kl")
    # Step 1's first update starts at the reference (KL 0), its second has moved once; step 2 further.
    assert 0 < kl[0]["train/kl_ref"] < kl[1]["train/kl_ref"], [m["train/kl_ref"] for m in kl]
    assert abs(kl[1]["train/loss"] - ref_metrics[1]["train/loss"]) > 1e-6, "the KL term enters the loss"
    for name in ("tp2", "pp2", "cp2", "tp2_to_tp1", "tp2_to_pp2"):
        metrics = read_metrics(runs / name)
        assert len(metrics) == len(ref_metrics) == 2
        for a, b in zip(metrics, ref_metrics):
            for key in ("train/loss", "train/grad_norm", "train/entropy", "reward/total_mean",
                        "rollout/mismatch_kl", "rollout/is_ratio_p50", "grpo/correction_weight_mean"):  # fmt: skip
                assert abs(a[key] - b[key]) <= 1e-5, f"{name} step {a['step']}: {key} {a[key]} vs tp1 {b[key]}"
        weights = load_file(runs / name / "hf" / "model.safetensors")
        assert weights.keys() == ref.keys()
        if name == "tp2":  # a training checkpoint converts to exactly what the trainer exported
            from srpo_mcore.checkpoint.convert import mcore_to_hf

            out = mcore_to_hf(runs / name / "checkpoints" / "step_000002", setup["root"] / "tp2_ckpt_hf")
            converted = load_file(out / "model.safetensors")
            assert all(torch.equal(converted[k], weights[k]) for k in weights), "converter != trainer export"
        worst = max((weights[k] - ref[k]).abs().max().item() for k in ref)
        assert worst <= 1e-5, f"{name}: updated weights differ from tp1 by {worst:.2e}"


def _continue_from(source_run: Path, step: str, run: Path) -> None:
    """A run directory whose latest checkpoint is `source_run`'s `step` (metrics up to that step)."""
    import shutil

    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(source_run / "checkpoints" / step, run / "checkpoints" / step)
    (run / "checkpoints" / "latest").write_text(step)
    shutil.copy(source_run / "metrics.jsonl", run / "metrics.jsonl")


def _start(recipe: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: nothing may hold the test up after a SIGKILL
        return subprocess.Popen(train_command(recipe), cwd=ROOT, env=train_env(), stdout=out, stderr=subprocess.STDOUT)


def _wait_for_steps(proc: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode})")
        if (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= steps:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {steps} steps logged within {timeout} s")


def _assert_complete_checkpoints(ckpt_dir: Path) -> None:
    visible = [p for p in ckpt_dir.glob("step_*")]
    assert visible, "no checkpoint at all"
    for p in visible:
        assert (p / "trainer_state.json").exists() and (p / "metadata.json").exists(), f"{p} is incomplete"
    latest = (ckpt_dir / "latest").read_text().strip()
    assert (ckpt_dir / latest).is_dir(), f"latest names {latest}, which does not exist"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_resume_equals_uninterrupted(setup, how: str) -> None:
    runs = setup["root"] / "runs"
    train = {"steps": 6, "save_every": 2}
    grpo = {"rollout_correction": "tis"}
    if not (runs / "straight" / "metrics.jsonl").exists():
        run_train(_recipe(setup, "straight", train=train, grpo=grpo))
    straight = _computed(read_metrics(runs / "straight"))
    assert len(straight) == 6

    recipe = _recipe(setup, how, train=train, grpo=grpo)
    log = setup["root"] / f"{how}.log"
    proc = _start(recipe, log)
    _wait_for_steps(proc, runs / how, 3)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    proc.wait(timeout=300)
    out = log.read_text()
    if how == "sigterm":
        assert proc.returncode == 0, out[-4000:]
        assert "SIGTERM: saved at step" in out
    else:
        assert proc.returncode == -signal.SIGKILL
    _assert_complete_checkpoints(runs / how / "checkpoints")
    resumed_out = run_train(recipe)
    assert "resumed from" in resumed_out
    resumed = _computed(read_metrics(runs / how))
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(resumed, straight):
        assert a == b, f"{how}: step {a['step']} differs after resume: " + ", ".join(
            f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
        )


def _learn(setup: dict) -> list[dict]:
    """The 40-step learning run on the exact engine (shared by the learning tests; run once)."""
    runs = setup["root"] / "runs"
    if not (runs / "learn" / "metrics.jsonl").exists() or len(read_metrics(runs / "learn")) < 40:
        # Check mode on: every step the engine's logprobs must match the trainer's within 1e-3.
        learn = _recipe(setup, "learn", train={"steps": 40}, logging={"plot_every": 20}, rollout={"check": True})
        (runs / "learn.log").write_text(run_train(learn, timeout=900))
    return read_metrics(runs / "learn")


def _mean(m: list[dict], key: str, sl: slice) -> float:
    values = [r[key] for r in m[sl]]
    return sum(values) / len(values)


def test_reward_rises(setup) -> None:
    """Secret-number task, 40 steps of 8 prompts x 8 samples: reward and accuracy must rise."""
    runs = setup["root"] / "runs"
    m = _learn(setup)
    assert len(m) == 40

    def mean(key: str, sl: slice) -> float:
        return _mean(m, key, sl)

    first, last = slice(0, 5), slice(-5, None)
    reward_gain = mean("reward/total_mean", last) - mean("reward/total_mean", first)
    acc_gain = mean("reward/last_accuracy", last) - mean("reward/last_accuracy", first)
    assert reward_gain >= 0.15, f"mean reward rose by only {reward_gain:.3f} (first 5 vs last 5 steps)"
    assert acc_gain >= 0.2, f"final-answer accuracy rose by only {acc_gain:.3f}"
    assert mean("reward/format_valid_rate", last) >= 0.7, "the format collapsed while learning"
    assert (runs / "learn" / "plots" / "reward.png").exists()


def _corrected_run(setup, name: str, rollout: dict, says: str) -> tuple[list[dict], float, float, float]:
    """40 steps with `rollout` served and ``tis`` (C=2) on; checks the log line, the step count and
    that it learns. Returns (metrics, mismatch KL, the exact engine's KL, final-reward gap to it)."""
    exact = _learn(setup)
    grpo = {"rollout_correction": "tis", "correction_cap": 2.0}
    out = run_train(_recipe(setup, name, train={"steps": 40}, rollout=rollout, grpo=grpo), timeout=900)
    assert says in out, out[-3000:]
    m = read_metrics(setup["root"] / "runs" / name)
    assert len(m) == 40
    kl, kl_exact = _mean(m, "rollout/mismatch_kl", slice(None)), _mean(exact, "rollout/mismatch_kl", slice(None))
    last = slice(-5, None)
    assert _mean(m, "reward/total_mean", last) - _mean(m, "reward/total_mean", slice(0, 5)) >= 0.15
    return m, kl, kl_exact, _mean(exact, "reward/total_mean", last) - _mean(m, "reward/total_mean", last)


def test_mismatched_rollout_with_correction_learns(setup) -> None:
    """The engine serves fp4-rounded weights (a real mismatch the metrics must show) and the update
    uses truncated importance sampling: the run learns within a stated margin of the exact engine's."""
    says = "rollout.simulate_mismatch=fp4: the engine serves"
    m, kl, kl_exact, gap = _corrected_run(setup, "mismatch-tis", {"simulate_mismatch": "fp4"}, says)
    assert kl > 1e-4 and kl > 100 * kl_exact, f"no real mismatch: KL {kl:.2e} vs exact engine {kl_exact:.2e}"
    assert max(r["rollout/is_ratio_max"] for r in m) > 2.0, "no token ratio above the cap: tis never truncated"
    assert _mean(m, "grpo/correction_fraction", slice(None)) > 0
    assert gap <= MISMATCH_MARGIN, f"corrected run's final reward is {gap:.3f} below the exact engine's"


def test_fp8_rollout_with_correction_learns(setup) -> None:
    """rollout.precision=fp8 (CPU: ModelOpt's FP8 weights dequantised, the GPU engine's values) with
    truncated importance sampling: a logged mismatch, and learning within a margin of the exact engine."""
    says = "rollout.precision=fp8 on CPU: SIMULATED FP8"
    rollout = {"precision": "fp8", "fp8_scheme": "block128"}
    _, kl, kl_exact, gap = _corrected_run(setup, "fp8-tis", rollout, says)
    print(f"fp8 block128 + tis: mismatch KL {kl:.3e} (exact {kl_exact:.3e}), final-reward gap {gap:+.3f}")
    assert kl > 1e-6 and kl > 100 * kl_exact, f"no FP8 mismatch: KL {kl:.2e} vs exact engine {kl_exact:.2e}"
    assert gap <= MISMATCH_MARGIN, f"fp8 + tis run's final reward is {gap:.3f} below the exact engine's"


def test_check_mode_fails_loudly(setup) -> None:
    """Check mode compares the engine's weights after every refit (and passes: the 40-step learning run
    has it on); a tolerance below the engine-vs-trainer numerical gap must stop the run and say why."""
    _learn(setup)
    out = (setup["root"] / "runs" / "learn.log").read_text()
    assert out.count("rollout check: engine weights equal the trainer's export") >= 30, out[-3000:]  # ~1 per step
    recipe = _recipe(setup, "check", train={"steps": 1}, rollout={"check": True, "check_tolerance": 1e-12})
    with pytest.raises(AssertionError, match=r"engine vs trainer logprob gap .* > rollout.check_tolerance 1e-12"):
        run_train(recipe)


def test_periodic_evaluation(setup) -> None:
    """``train.eval_every``: the policy is evaluated through the refitted engine; eval/* metrics logged."""
    from srpo_mcore.eval.fixtures import write_fixture_root

    root = write_fixture_root(setup["root"] / "bench")
    train = {"steps": 2, "eval_every": 2, "eval_benchmarks": "mathvista", "eval_data_root": str(root)}
    rollout = {"max_model_len": 1024}
    run_train(_recipe(setup, "evals", train={**train, "eval_limit": 2, "eval_max_tokens": 8}, rollout=rollout))
    m = read_metrics(setup["root"] / "runs" / "evals")
    assert "eval/mathvista/accuracy" not in m[0]
    assert 0.0 <= m[1]["eval/mathvista/accuracy"] <= 100.0 and m[1]["time/eval_s"] > 0
    assert m[1]["eval/questions"] == 2 and m[1]["eval/prompt_too_long"] == 0, m[1]
    assert 0 < m[1]["eval/response_tokens_mean"] <= 8, "the engine generated the answers"
