"""The laptop demo's recipe: one YAML file for the whole SRPO pipeline (``examples/srpo_tiny_cpu.yaml``).

Owns ``DemoConfig`` — the demo's own settings (data sizes, the tiny policy, the reflection set, the
sampled test evaluation, processes) plus one ``RunConfig`` section per training stage
(``instruct``, ``sft``, ``grpo``), each exactly what ``python -m srpo_mcore.sft`` /
``python -m srpo_mcore.train`` read — and ``load_demo_config``: strict loading with ``--set
a.b=c`` overrides (``--set grpo.optim.lr=1e-4``) and errors that name the dotted field at fault.

Does not own what the stages do (``pipeline``) or the trainers' schema (``srpo_mcore.config``). The
pipeline fills in each stage's paths (``model.hf_dir``, ``data.train_files``, ``output_dir``,
``name``); a recipe leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srpo_mcore.config import ConfigError, RunConfig, apply_override, from_dict

STAGE_SECTIONS = ("instruct", "sft", "grpo")
"""Sections that are trainer recipes (``RunConfig``), in pipeline order."""
FILLED_BY_PIPELINE = (
    "output_dir", "name", "seed", "model.hf_dir", "data.train_files",
    "train.eval_benchmarks", "train.eval_data_root", "train.eval_limit",
)  # fmt: skip
"""Fields of a stage section the pipeline sets itself."""


@dataclass
class DemoData:
    """The synthetic task (``srpo_mcore.data.synthetic``) and how its training rows are split."""

    n_instruct: int = 512
    """Rows of stage 0 (plain-format answers that stand in for an Instruct model)."""
    n_pool: int = 512
    """Rows the stage-1 reflection set is built from."""
    n_rl: int = 512
    """Rows of the stage-2 (GRPO) prompts."""
    n_test: int = 96
    """Held-out rows every evaluation uses."""
    image_size: int = 56
    """Image side in pixels (a multiple of 28)."""


@dataclass
class DemoReflection:
    """Stage 1's reflection set (``python -m srpo_mcore.reflection.build``, template teacher)."""

    size: int = 384
    """Target number of SFT items."""
    correct_fraction: float = 0.3
    """Share of correct first answers (the paper's ~30%)."""
    max_tokens: int = 64
    """New tokens of a first answer."""


@dataclass
class DemoEval:
    """How each stage's policy is measured on the test split."""

    max_tokens: int = 160
    """New tokens per response."""
    samples: int = 8
    """Sampled responses per test question (at the GRPO stage's rollout temperature) for the mean
    test reward; greedy decoding gives the accuracy."""


@dataclass
class DemoConfig:
    """The whole demo. Stage sections are plain data checked as ``RunConfig`` on load."""

    name: str = "srpo-tiny-cpu"
    """Run name: the run directory is ``<output_dir>/<name>``."""
    seed: int = 0
    """Seed of the data and of every stage."""
    output_dir: str = "runs"
    """Parent of the run directory."""
    policy: str = "demo"
    """Tiny random Qwen2.5-VL the demo starts from (``srpo_mcore.tiny.checkpoints.TINY_CONFIGS``)."""
    nproc: int = 2
    """Processes of the training stages (torchrun ``--nproc_per_node``)."""
    data: DemoData = field(default_factory=DemoData)
    reflection: DemoReflection = field(default_factory=DemoReflection)
    eval: DemoEval = field(default_factory=DemoEval)
    instruct: dict[str, Any] = field(default_factory=dict)
    """Stage 0: ``python -m srpo_mcore.sft`` recipe (plain-format answers)."""
    sft: dict[str, Any] = field(default_factory=dict)
    """Stage 1: ``python -m srpo_mcore.sft`` recipe (the reflection set)."""
    grpo: dict[str, Any] = field(default_factory=dict)
    """Stage 2: ``python -m srpo_mcore.train`` recipe (GRPO with the reflection reward)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def stage(self, section: str) -> RunConfig:
        """The ``RunConfig`` of stage `section`: the recipe's section with the pipeline's settings
        (run directory, name, seed; the GRPO stage's evaluation on the test split) filled in; its
        ``model.hf_dir`` and ``data.train_files`` are set when the stage runs."""
        stage = from_dict(RunConfig, getattr(self, section), section)
        stage.name, stage.output_dir, stage.seed = section, str(self.run_dir), self.seed
        if section == "grpo":
            stage.train.eval_benchmarks = "synthetic"
            stage.train.eval_data_root = str(self.run_dir / "data")
            stage.train.eval_limit = self.data.n_test
        return stage


def load_demo_config(path: str | Path, overrides: Sequence[str] = ()) -> DemoConfig:
    """Read a demo recipe, apply ``--set`` overrides and check every section.

    Raises:
        ConfigError: Naming the file and the dotted field at fault.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read recipe: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    try:
        for assignment in overrides:
            apply_override(data, assignment)
        cfg = from_dict(DemoConfig, data)
        problems = []
        d = cfg.data
        if min(d.n_instruct, d.n_pool, d.n_rl, d.n_test) < 1:
            problems.append("data.n_instruct, n_pool, n_rl and n_test must be >= 1")
        if not 0 < cfg.reflection.size <= d.n_pool:
            problems.append(f"reflection.size ({cfg.reflection.size}) must be in [1, data.n_pool={d.n_pool}]")
        if cfg.nproc < 1 or cfg.eval.samples < 1 or cfg.eval.max_tokens < 1:
            problems.append("nproc, eval.samples and eval.max_tokens must be >= 1")
        for section in STAGE_SECTIONS:
            raw = getattr(cfg, section)
            for dotted in FILLED_BY_PIPELINE:
                head, _, tail = dotted.partition(".")
                if (tail and tail in (raw.get(head) or {})) or (not tail and head in raw):
                    problems.append(f"{section}.{dotted} is set by the pipeline; leave it out of the recipe")
            try:
                cfg.stage(section).validate(world_size=cfg.nproc)
            except ConfigError as e:
                problems.append(f"{section}: {e}")
        if problems:
            raise ConfigError("; ".join(problems))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg
