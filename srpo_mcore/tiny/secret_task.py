"""The secret-number task: the smallest task on which a GRPO policy visibly learns from the reward.

Owns:

- ``secret_task``: text-only prompts ("what is the secret number?") whose gold is always 7;
- ``warm_policy``: a tiny Qwen2.5-VL fine-tuned with plain HF transformers on five-block SRPO
  responses whose two answers are random digits — it writes the format (so the reward is not
  identically 0) but answers 7 only by chance, which is what GRPO must improve;
- ``learning_recipe``: the GRPO recipe of that run (8 prompts x 8 samples, fp32, one process), as
  the e2e trainer tests and ``tools/bench_mismatch.py`` use it.

Does not own: the trainer or how a test judges the run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def learning_recipe(name: str, *, output_dir: Path, policy: Path, task: Path, steps: int = 2) -> dict:
    """The GRPO recipe (a plain dict, override any section) of a run on the secret-number task."""
    return {
        "name": name,
        "seed": 1,
        "output_dir": str(output_dir),
        "model": {"hf_dir": str(policy), "dtype": "fp32"},
        "data": {"train_files": [str(task)], "prompts_per_step": 8, "prompt": "none"},
        "rollout": {"n": 8, "max_tokens": 64, "max_model_len": 256, "kv_cache_gib": 0.25},
        "reward": {"num_workers": 0},
        "optim": {"lr": 2.0e-4},
        "train": {"steps": steps, "save_every": 0, "export_hf_at_end": False},
        "logging": {"wandb_mode": "disabled", "plot_every": 0},
    }
