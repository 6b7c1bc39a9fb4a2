"""The laptop demo's stages, run in order, each skipped when its output already exists.

Reads top to bottom as the SRPO recipe on the synthetic task (``examples/srpo_tiny_cpu.yaml``):

1. ``data``: the synthetic task under ``<run>/data/synthetic/`` (train + test), its train rows split
   into ``instruct.jsonl`` (with plain-format targets), ``pool.jsonl`` and ``rl.jsonl``;
2. ``policy``: the tiny random Qwen2.5-VL (``srpo_mcore.tiny.checkpoints``);
3. ``instruct``: stage 0, SFT on plain ``<think><answer>`` answers (stands in for the Instruct model);
4. ``reflection``: stage 1's set — the stage-0 policy answers the pool, the template teacher reflects;
5. ``sft``: stage 1, reflection SFT (five-block responses);
6. ``measure_sft``: greedy accuracy and sampled mean reward of the SFT policy on the test split;
7. ``grpo``: stage 2, GRPO with the reflection reward (evaluating the test split every few steps);
8. ``measure_grpo``: the same measurement of the GRPO policy;
9. ``report``: ``report.md``, ``report.json`` and PNGs in the run directory.

Training stages run under ``torchrun --standalone --nproc_per_node <nproc>`` with the stage's
recipe written to ``<run>/recipes/<stage>.yaml``; every stage's output goes to
``<run>/logs/<stage>.log`` while the console shows one line per stage (a progress bar while a
trainer runs). A stage that fails stops the pipeline with the end of its log; rerunning the same
command continues: finished stages are skipped, an interrupted trainer resumes from its checkpoint,
the reflection builder from its journal.

Owns the order, the paths and the process launching; each stage's work belongs to its module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from srpo_mcore.config import to_dict
from srpo_mcore.demo.config import DemoConfig
from srpo_mcore.observe.metrics_log import MetricsLog


class StageError(RuntimeError):
    """A stage's process failed; the message holds the end of its log and the log's path."""


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    done: Callable[[], bool]
    run: Callable[[], str]
    """Runs the stage; returns a one-line result for the console."""


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("WANDB_MODE", "offline")
    return env


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _last_record(path: Path) -> dict[str, Any]:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


class DemoPipeline:
    """The demo run under ``<output_dir>/<name>/``.

    Args:
        cfg: The demo recipe.
        progress: Show a progress bar while a trainer runs.
        echo: Where console lines go.
    """

    def __init__(self, cfg: DemoConfig, *, progress: bool = True, echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.progress = progress
        self.echo = echo
        self.run_dir = cfg.run_dir
        self.data_root = self.run_dir / "data"
        self.synthetic = self.data_root / "synthetic"
        self.logs = self.run_dir / "logs"
        self.timings_path = self.run_dir / "stages.json"
        self.base_policy: Path | None = None

    # -- paths ------------------------------------------------------------------------------------

    def hf(self, stage: str) -> Path:
        """The HF export of a training stage's final policy."""
        return self.run_dir / stage / "hf"

    def measured(self, stage: str) -> Path:
        return self.run_dir / "eval" / stage / "sampled.json"

    @property
    def reflection_set(self) -> Path:
        return self.run_dir / "reflection" / "sft.jsonl"

    # -- stages -----------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        c = self.cfg
        return [
            Stage("data", "synthetic task", self._data_done, self._data),
            Stage("policy", f"tiny random Qwen2.5-VL ({c.policy})", lambda: False, self._policy),
            Stage("instruct", "stage 0: SFT on plain answers", lambda: self._hf_done("instruct"), self._instruct),
            Stage("reflection", "stage 1: reflection set", self.reflection_set.exists, self._reflection),
            Stage("sft", "stage 1: reflection SFT", lambda: self._hf_done("sft"), self._sft),
            Stage("measure_sft", "test split: SFT policy", self.measured("sft").exists, lambda: self._measure("sft")),
            Stage("grpo", "stage 2: GRPO, reflection reward", lambda: self._hf_done("grpo"), self._grpo),
            Stage("measure_grpo", "test split: GRPO policy", self.measured("grpo").exists, lambda: self._measure("grpo")),
            Stage("report", "report", lambda: False, self._report),
        ]  # fmt: skip

    def run(self) -> Path:
        """Run every unfinished stage; returns the report's path. Raises ``StageError`` on a failure."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._check_same_recipe()
        (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        stages = self.stages()
        timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.echo(f"SRPO demo: run directory {self.run_dir} (stage logs in {self.logs})")
        start_all = time.perf_counter()
        for i, stage in enumerate(stages, 1):
            label = f"[{i}/{len(stages)}] {stage.name:<12} {stage.what:<34}"
            if stage.done():
                self.echo(f"{label} done earlier ({timings.get(stage.name, {}).get('seconds', 0):.0f} s)")
                continue
            t0 = time.perf_counter()
            result = stage.run()
            seconds = time.perf_counter() - t0
            if stage.name not in ("policy", "report") and not stage.done():  # e.g. a trainer stopped by SIGTERM
                raise StageError(
                    f"stage {stage.name} ended without its output; rerun the same command to continue "
                    f"(log: {self.logs / (stage.name + '.log')})"
                )
            timings[stage.name] = {"seconds": round(seconds, 1), "result": result}
            tmp = self.timings_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(timings, indent=2))
            os.replace(tmp, self.timings_path)
            self.echo(f"{label} {seconds:6.0f} s  {result}")
        self.echo(f"SRPO demo finished in {time.perf_counter() - start_all:.0f} s: {self.run_dir / 'report.md'}")
        return self.run_dir / "report.md"

    def _check_same_recipe(self) -> None:
        """Continuing a run with another recipe would mix stages of both: refuse, naming the fields."""
        stored_path = self.run_dir / "recipe.yaml"
        if not stored_path.exists():
            return
        stored, now = _flatten(yaml.safe_load(stored_path.read_text()) or {}), _flatten(to_dict(self.cfg))
        changed = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
        if changed:
            shown = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
            raise StageError(
                f"{self.run_dir} was started with another recipe ({shown}{', ...' if len(changed) > 6 else ''}); "
                "continue it with the same settings, start over with --fresh, or choose another --set name=..."
            )

    # -- processes --------------------------------------------------------------------------------

    def _launch(self, name: str, cmd: list[str], *, threads: int, watch: tuple[Path, int] | None = None) -> None:
        """Run `cmd` with its output in ``logs/<name>.log``; with `watch` = (metrics.jsonl, steps),
        show a progress bar fed by the trainer's metrics."""
        log_path = self.logs / f"{name}.log"
        with log_path.open("a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(threads))
            bar = None
            if watch is not None and self.progress:
                from tqdm import tqdm

                bar = tqdm(total=watch[1], desc=f"  {name}", unit="step", leave=False, file=sys.stdout)
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    if bar is not None and watch is not None:
                        bar.n = _count_lines(watch[0])
                        last = _last_record(watch[0])
                        shown = {"reward/total_mean": "reward", "reward/last_accuracy": "acc", "train/loss": "loss"}
                        bar.set_postfix({v: f"{last[k]:.3f}" for k, v in shown.items() if k in last}, refresh=False)
                        bar.refresh()
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
            finally:
                if bar is not None:
                    bar.close()
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise StageError(f"stage {name} failed (exit {proc.returncode}); end of {log_path}:\n{tail}")

    def _torchrun(self, module: str) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(self.cfg.nproc), "-m", module,
        ]  # fmt: skip

    def _stage_recipe(self, section: str, train_files: list[Path], hf_dir: Path) -> Path:
        """Write ``recipes/<section>.yaml``: the stage's recipe with its policy and data filled in."""
        stage = self.cfg.stage(section)
        stage.model.hf_dir = str(hf_dir)
        stage.data.train_files = [str(p) for p in train_files]
        stage.validate(world_size=self.cfg.nproc)
        path = self.run_dir / "recipes" / f"{section}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(to_dict(stage), sort_keys=False))
        return path

    def _hf_done(self, stage: str) -> bool:
        return (self.hf(stage) / "config.json").exists()

    # -- the stages' work -------------------------------------------------------------------------

    def _data_done(self) -> bool:
        return (
            all((self.data_root / f).exists() for f in ("instruct.jsonl", "pool.jsonl", "rl.jsonl"))
            and (self.synthetic / "test.jsonl").exists()
        )

    def _data(self) -> str:
        from srpo_mcore.data.synthetic import generate_items, write_synthetic_task
        from srpo_mcore.demo.instruct import instruct_response, write_jsonl_rows

        d, seed = self.cfg.data, self.cfg.seed
        n_train = d.n_instruct + d.n_pool + d.n_rl
        paths = write_synthetic_task(
            self.synthetic, n_train=n_train, n_test=d.n_test, seed=seed, image_size=d.image_size
        )
        rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
        for row in rows:  # the split files live one directory up
            row["images"] = [f"synthetic/{p}" for p in row["images"]]
        items = generate_items(d.n_instruct, seed=seed, split="train", image_size=d.image_size)
        instruct = [dict(row, response=instruct_response(it)) for row, it in zip(rows, items)]
        write_jsonl_rows(self.data_root / "instruct.jsonl", instruct)
        write_jsonl_rows(self.data_root / "pool.jsonl", rows[d.n_instruct : d.n_instruct + d.n_pool])
        write_jsonl_rows(self.data_root / "rl.jsonl", rows[d.n_instruct + d.n_pool :])
        return f"{n_train} train rows ({d.n_instruct} stage 0 / {d.n_pool} pool / {d.n_rl} RL), {d.n_test} test"

    def _policy(self) -> str:
        from transformers.utils import logging as hf_logging

        from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

        hf_logging.disable_progress_bar()
        self.base_policy = build_tiny_checkpoint(self.cfg.policy, seed=self.cfg.seed)
        config = json.loads((self.base_policy / "config.json").read_text())
        t = config.get("text_config", config)
        return f"{t['num_hidden_layers']} layers x {t['hidden_size']}, vocab {t['vocab_size']}: {self.base_policy}"

    def _sft_steps(self, section: str, rows: int) -> int:
        stage = self.cfg.stage(section)
        return stage.train.steps or stage.train.episodes * math.ceil(rows / stage.sft.batch_size)

    def _loss_range(self, stage: str) -> str:
        losses = [r.get("train/loss") for r in MetricsLog.read(self.run_dir / stage)]
        return f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "no steps"

    def _instruct(self) -> str:
        assert self.base_policy is not None
        recipe = self._stage_recipe("instruct", [self.data_root / "instruct.jsonl"], self.base_policy)
        steps = self._sft_steps("instruct", self.cfg.data.n_instruct)
        watch = (self.run_dir / "instruct" / "metrics.jsonl", steps)
        self._launch("instruct", [*self._torchrun("srpo_mcore.sft"), "--config", str(recipe)], threads=1, watch=watch)
        return self._loss_range("instruct")

    def _reflection(self) -> str:
        c = self.cfg
        grpo = c.stage("grpo")
        cmd = [
            sys.executable, "-m", "srpo_mcore.reflection.build", "--pool", str(self.data_root / "pool.jsonl"),
            "--policy", str(self.hf("instruct")), "--out", str(self.run_dir / "reflection"),
            "--size", str(c.reflection.size), "--teacher", "template",
            "--correct-fraction", str(c.reflection.correct_fraction), "--max-tokens", str(c.reflection.max_tokens),
            "--max-model-len", str(grpo.rollout.max_model_len), "--dtype", "fp32", "--batch-size", "64",
            "--policy-prompt", c.stage("instruct").data.prompt, "--seed", str(c.seed), "--no-progress",
            "--lenient-first",  # a short stage 0 may leave some answers untagged: repair, count, keep them
        ]  # fmt: skip
        self._launch("reflection", cmd, threads=c.nproc)
        rows = [json.loads(line) for line in self.reflection_set.read_text().splitlines() if line.strip()]
        right = sum(r["first_correct"] for r in rows)
        return f"{len(rows)} five-block responses ({right} right / {len(rows) - right} wrong first answers)"

    def _sft(self) -> str:
        recipe = self._stage_recipe("sft", [self.reflection_set], self.hf("instruct"))
        rows = _count_lines(self.reflection_set)
        watch = (self.run_dir / "sft" / "metrics.jsonl", self._sft_steps("sft", rows))
        self._launch("sft", [*self._torchrun("srpo_mcore.sft"), "--config", str(recipe)], threads=1, watch=watch)
        return self._loss_range("sft")

    def _grpo(self) -> str:
        c = self.cfg
        grpo = c.stage("grpo")
        recipe = self._stage_recipe("grpo", [self.data_root / "rl.jsonl"], self.hf("sft"))
        steps = grpo.train.steps or grpo.train.episodes * math.ceil(c.data.n_rl / grpo.data.prompts_per_step)
        watch = (self.run_dir / "grpo" / "metrics.jsonl", steps)
        self._launch("grpo", [*self._torchrun("srpo_mcore.train"), "--config", str(recipe)], threads=1, watch=watch)
        records = MetricsLog.read(self.run_dir / "grpo")
        first, last = records[0], records[-1]
        return (
            f"{len(records)} steps, mean reward {first['reward/total_mean']:.3f} -> {last['reward/total_mean']:.3f} "
            f"(step 1 -> {len(records)})"
        )

    def _measure(self, stage: str) -> str:
        c = self.cfg
        grpo = c.stage("grpo")
        out = self.measured(stage).parent
        cmd = [
            sys.executable, "-m", "srpo_mcore.demo.measure", "--model", str(self.hf(stage)),
            "--data-root", str(self.data_root), "--out", str(out), "--prompt", grpo.data.prompt,
            "--max-tokens", str(c.eval.max_tokens), "--max-model-len", str(grpo.rollout.max_model_len),
            "--samples", str(c.eval.samples), "--temperature", str(grpo.rollout.temperature),
            "--reward", json.dumps(to_dict(grpo.reward)),
        ]  # fmt: skip
        self._launch(f"measure_{stage}", cmd, threads=c.nproc)
        r = json.loads(self.measured(stage).read_text())
        g, s = r["greedy"], r["sampled"]
        return (
            f"greedy accuracy {g['accuracy']:.1f}%, format-valid {g['format_valid_rate']:.0f}%; "
            f"sampled reward {s['total_mean']:.3f}"
        )

    def _report(self) -> str:
        from srpo_mcore.demo.report import write_report

        report = write_report(self)
        return f"{report.relative_to(self.run_dir.parent) if report.is_relative_to(self.run_dir.parent) else report}"
