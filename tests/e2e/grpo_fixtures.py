"""Fixtures of the GRPO trainer tests: a small synthetic task, a format-warm policy, a runner.

- ``secret_task``: text-only prompts ("what is the secret number?") whose gold is always 7 — the
  smallest task on which a policy can visibly learn from the reward alone.
- ``warm_policy``: the tiny random Qwen2.5-VL fine-tuned with plain HF transformers for a few
  dozen steps on five-block SRPO responses whose two answers are random digits. It then writes the
  format (so the reward is not identically 0) but answers 7 only by chance — what GRPO must improve.
- ``run_train``: ``python -m srpo_mcore.train`` (or torchrun with 2 processes) as a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GOLD = "7"


def secret_task(out: Path, n: int = 16) -> Path:
    """``out/train.jsonl`` with `n` text-only prompts (gold 7)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            row = {
                "id": f"q{i:03d}",
                "question": f"Riddle {i}: what is the secret number?",
                "answer": GOLD,
                "images": [],
            }
            f.write(json.dumps(row) + "\n")
    return path


def srpo_response(first: int, second: int) -> str:
    return (
        f"<think> guess </think><answer> \\boxed{{{first}}} </answer>"
        f"<reflection> check the guess </reflection>"
        f"<think> again </think><answer> \\boxed{{{second}}} </answer>"
    )


def warm_policy(hf_dir: Path, out: Path, task: Path, *, steps: int = 60, seed: int = 0) -> Path:
    """Fine-tune `hf_dir` with HF transformers on random-answer SRPO responses; save to `out`."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from srpo_mcore.config import DataConfig
    from srpo_mcore.data.rl_dataset import chat_prompt, load_prompt_rows

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = AutoProcessor.from_pretrained(hf_dir)
    tok = processor.tokenizer
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    rows, _ = load_prompt_rows(DataConfig(train_files=[str(task)], prompt="none"), progress=False)
    prompts = [tok(chat_prompt(r, tok, "none")).input_ids for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = []
        for _ in range(16):
            p = rng.choice(prompts)
            r = tok(srpo_response(rng.randrange(10), rng.randrange(10)) + tok.eos_token).input_ids
            batch.append((p, r))
        S = max(len(p) + len(r) for p, r in batch)
        ids = torch.full((len(batch), S), tok.pad_token_id)
        labels = torch.full((len(batch), S), -100)
        mask = torch.zeros(len(batch), S, dtype=torch.long)
        for b, (p, r) in enumerate(batch):
            ids[b, : len(p) + len(r)] = torch.tensor(p + r)
            labels[b, len(p) : len(p) + len(r)] = torch.tensor(r)
            mask[b, : len(p) + len(r)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_command(recipe: Path, overrides: list[str] = (), nproc: int = 1) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    if nproc == 1:
        return [sys.executable, "-m", "srpo_mcore.train", "--config", str(recipe), *sets]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*torchrun, "--master_port", str(free_port()), "-m", "srpo_mcore.train", "--config", str(recipe), *sets]


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("MASTER_PORT", str(free_port()))
    return env


def run_train(recipe: Path, overrides: list[str] = (), *, nproc: int = 1, timeout: int = 600) -> str:
    """Run the trainer to completion; return its output (raises with the output on failure)."""
    proc = subprocess.run(
        train_command(recipe, overrides, nproc),
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"trainer exited with {proc.returncode}:\n{out[-6000:]}")
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    from srpo_mcore.observe.metrics_log import MetricsLog

    return MetricsLog.read(run_dir)
