"""Measure one policy on the demo's test split: ``python -m srpo_mcore.demo.measure``.

Two numbers per policy, from one in-process vLLM engine:

- **greedy**: the evaluation library with the paper's protocol (``srpo_mcore.eval.run.evaluate``:
  final answer = last ``<answer>``, first answer scored too), written to ``<out>/greedy/``
  (``samples.jsonl``, ``summary.json``, ``summary.md``), plus the greedy responses' format-valid rate;
- **sampled**: ``--samples`` responses per question at the GRPO stage's temperature with one fixed
  seed per question, scored with the SRPO reward (``RewardScorer``; the config's variant): mean reward,
  its components, accuracies, format-valid and transition rates — what GRPO optimises, measured on
  questions it never trained on. Written to ``<out>/sampled.json`` (and ``sampled.jsonl``).

``<out>/sampled.json`` is written last (atomically): its presence means the measurement is complete.

Does not own: the eval protocol (``srpo_mcore.eval``), the reward (``srpo_mcore.rl.rewards``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SEED = 20261201
"""Base of the per-question sampling seeds (seed of question i: SEED + i), the same for every policy."""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def measure(
    model: str,
    data_root: str,
    out: Path,
    *,
    prompt: str,
    max_tokens: int,
    max_model_len: int,
    samples: int,
    temperature: float,
    reward_cfg: Any,
    kv_cache_gib: float = 0.25,
) -> dict[str, Any]:
    """Greedy evaluation + sampled reward of `model` on the synthetic test split; returns the summary."""
    from transformers import AutoProcessor

    from srpo_mcore.config import RolloutConfig
    from srpo_mcore.eval.benchmarks import load_items
    from srpo_mcore.eval.run import build_request, evaluate, summarize, write_outputs
    from srpo_mcore.rl.rewards import RewardScorer
    from srpo_mcore.rl.rewards import summarize as summarize_rewards
    from srpo_mcore.rl.rewards.format import parse_response
    from srpo_mcore.rollout.engine import RolloutEngine

    items = load_items("synthetic", "test", data_root)
    processor = AutoProcessor.from_pretrained(model)
    tok = processor.tokenizer
    cfg = RolloutConfig(
        n=samples,
        temperature=temperature,
        max_tokens=max_tokens,
        max_model_len=max_model_len,
        max_images_per_prompt=max(len(it.images) for it in items),
        kv_cache_gib=kv_cache_gib,
    )
    engine = RolloutEngine(model, cfg, dtype="fp32")
    try:
        greedy = evaluate(
            engine, items, tok, prompt=prompt, max_tokens=max_tokens, progress=False,
            processor=processor, max_model_len=max_model_len,
        )  # fmt: skip
        requests = [build_request(it, tok, prompt) for it in items]
        sampled = engine.generate(requests, n=samples, seeds=[SEED + i for i in range(len(items))])
    finally:
        engine.close()
    summary = summarize(greedy)
    write_outputs(out / "greedy", greedy, summary, {"model": model, "prompt": prompt, "max_tokens": max_tokens})
    flat = [(it, s) for it, group in zip(items, sampled) for s in group]
    with RewardScorer(
        reward_cfg, count_tokens=lambda xs: [len(t) for t in tok(xs, add_special_tokens=False).input_ids]
    ) as scorer:
        rewards = scorer.score(
            [s.text for _, s in flat], [it.gold for it, _ in flat], [len(s.token_ids) for _, s in flat]
        )
    with open(out / "sampled.jsonl", "w") as f:
        for (it, s), r in zip(flat, rewards):
            row = {"id": it.id, "task": it.category, "gold": it.gold, "response": s.text, "reward": r.total}
            f.write(json.dumps(row) + "\n")
    bench = summary["benchmarks"]["synthetic"]
    result = {
        "model": model,
        "questions": len(items),
        "greedy": {
            "accuracy": bench["accuracy"],
            "first_accuracy": bench["first_accuracy"],
            "format_valid_rate": 100.0 * sum(parse_response(r.response).is_srpo_format for r in greedy) / len(greedy),
            "categories": {c: v["accuracy"] for c, v in bench["splits"]["test"]["categories"].items()},
        },
        "sampled": {
            "samples_per_question": samples,
            "temperature": temperature,
            **summarize_rewards(rewards, prefix=""),
        },
    }
    _write_json(out / "sampled.json", result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``measure`` (the demo pipeline calls it once per policy)."""
    from srpo_mcore.config import RewardConfig, from_dict

    p = argparse.ArgumentParser(prog="python -m srpo_mcore.demo.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint directory of the policy")
    p.add_argument("--data-root", required=True, help="directory holding synthetic/test.jsonl")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--prompt", choices=("srpo", "plain", "none"), default="none", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--max-model-len", type=int, default=384)
    p.add_argument("--samples", type=int, default=8, help="sampled responses per question")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--reward", default="{}", help="reward config as JSON (RewardConfig fields)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    result = measure(
        a.model, a.data_root, a.out, prompt=a.prompt, max_tokens=a.max_tokens, max_model_len=a.max_model_len,
        samples=a.samples, temperature=a.temperature, reward_cfg=from_dict(RewardConfig, json.loads(a.reward), "reward"),
    )  # fmt: skip
    g, s = result["greedy"], result["sampled"]
    print(
        f"{a.model}: greedy accuracy {g['accuracy']:.1f}% (first {g['first_accuracy']:.1f}%), format-valid "
        f"{g['format_valid_rate']:.1f}%; sampled mean reward {s['total_mean']:.3f}, accuracy {100 * s['last_accuracy']:.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
