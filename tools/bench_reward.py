#!/usr/bin/env python
"""Benchmark the SRPO reward: responses/second in-process and with the verifier pool.

Builds a realistic batch (128 prompts x 8 samples by default; ~500-token five-block responses,
mixed correct/wrong first and second answers in varied but equivalent forms — integers, decimals
vs fractions, radicals, multiples of pi, polynomials, choice letters — one random gold per prompt), scores it with each mode on a cold cache,
and measures what one pathological answer costs. Tokens are counted with the tiny tokenizer.

    .venv/bin/python tools/bench_reward.py [--prompts 128] [--samples 8] [--workers N] [--timeout 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from srpo_mcore.config import RewardConfig
from srpo_mcore.rl.rewards import RewardScorer, summarize
from srpo_mcore.rl.rewards.verify import AnswerVerifier, _parse, verify_answer
from srpo_mcore.tiny.tokenizer import synthetic_corpus, train_tiny_tokenizer


def make_gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A random gold answer, equivalent correct forms of it, and plausible wrong answers."""
    kind = rng.choice(["int", "frac", "sqrt", "pi", "choice", "poly"])
    if kind == "int":
        n = rng.randint(0, 2000)
        return str(n), [str(n), f"{n}.0", f"x = {n}"], [str(n + 1), str(n - 1), str(2 * n + 3)]
    if kind == "frac":
        p, q = rng.randint(1, 9), rng.choice([2, 4, 5, 8])
        return (
            f"\\frac{{{p}}}{{{q}}}",
            [f"\\frac{{{p}}}{{{q}}}", f"{p / q:g}", f"{p}/{q}"],
            [f"\\frac{{{p + 1}}}{{{q}}}", f"{p / q + 0.1:g}"],
        )
    if kind == "sqrt":
        k = rng.choice([2, 3, 5, 6, 7, 10])
        return (
            f"\\sqrt{{{k}}}",
            [f"\\sqrt{{{k}}}", f"\\sqrt {k}", f"{k**0.5:.8f}"],
            [f"\\sqrt{{{k + 1}}}", f"{k**0.5:.2f}"],
        )
    if kind == "pi":
        k = rng.randint(2, 9)
        return f"{k}\\pi", [f"{k}\\pi", f"{k * 3.141592653589793:.9f}", f"\\pi \\cdot {k}"], [f"{k + 1}\\pi", f"{k}"]
    if kind == "choice":
        c = rng.choice("ABCDE")
        wrong = [x for x in "ABCDE" if x != c]
        return c, [c, f"({c})", f"The answer is {c}"], wrong
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"{a}x^2+{b}", [f"{a}x^2 + {b}", f"{b} + {a} x^{{2}}"], [f"{a}x^2-{b}", f"{a + 1}x^2+{b}"]


PATHOLOGICAL = "9^{9^{9^{9^{9^{9}}}}}"


def make_batch(prompts: int, samples: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    tags = ("<think>", "</think>", "<answer>", "</answer>", "<reflection>", "</reflection>")
    lines = [ln for ln in synthetic_corpus(n_lines=4000, seed=seed) if not any(t in ln for t in tags)]
    responses, golds = [], []
    for _ in range(prompts):
        gold, right, wrong = make_gold(rng)
        for _ in range(samples):
            a1 = rng.choice(right) if rng.random() < 0.5 else rng.choice(wrong)
            a2 = rng.choice(right) if rng.random() < 0.6 else rng.choice(wrong)
            think1 = " ".join(rng.choice(lines) for _ in range(10))
            refl = " ".join(rng.choice(lines) for _ in range(4))
            think2 = " ".join(rng.choice(lines) for _ in range(8))
            responses.append(
                f"<think>{think1}</think>\n<answer>\\boxed{{{a1}}}</answer>\n<reflection>{refl}</reflection>\n"
                f"<think>{think2}</think>\n<answer>\\boxed{{{a2}}}</answer>"
            )
            golds.append(gold)
    return responses, golds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool size (default: cores)")
    parser.add_argument("--timeout", type=float, default=5.0, help="verification bound per answer (s)")
    args = parser.parse_args()

    tok = train_tiny_tokenizer()

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    responses, golds = make_batch(args.prompts, args.samples, seed=0)
    lengths = count_tokens(responses)
    print(
        f"batch: {len(responses)} responses, tokens/response mean {statistics.mean(lengths):.0f} "
        f"(min {min(lengths)}, max {max(lengths)}), {os.cpu_count()} cores"
    )
    rows = []
    for name, workers in (("in-process", 0), (f"pool x{args.workers}", args.workers)):
        verify_answer.cache_clear()
        _parse.cache_clear()
        cfg = RewardConfig(num_workers=workers, verify_timeout_s=args.timeout)
        t0 = time.perf_counter()
        verifier = AnswerVerifier(num_workers=workers, timeout_s=args.timeout)
        with RewardScorer(cfg, count_tokens=count_tokens, verifier=verifier) as scorer:
            verifier.verify([("1", "1")])  # start the workers
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = scorer.score(responses, golds)
            elapsed = time.perf_counter() - t1
            first_answer = responses[0].split("<answer>", 1)[1].split("</answer>", 1)[0]
            bad = [*responses[:63], responses[0].replace(first_answer, f"\\boxed{{{PATHOLOGICAL}}}", 1)]
            t2 = time.perf_counter()
            scorer.score(bad, golds[:64])
            patho = time.perf_counter() - t2
        verifier.close()
        m = summarize(out)
        rows.append(
            (name, len(out) / elapsed, elapsed, startup, patho, m["reward/total_mean"], m["reward/format_valid_rate"])
        )
    print()
    print(
        f"| {'mode':<12} | {'responses/s':>11} | {'batch s':>7} | {'startup s':>9} | {'64 w/ 1 pathological s':>22} | {'mean R':>6} | {'fmt ok':>6} |"
    )
    print(f"|{'-' * 14}|{'-' * 13}|{'-' * 9}|{'-' * 11}|{'-' * 24}|{'-' * 8}|{'-' * 8}|")
    for name, rps, el, st, pa, mean, fmt in rows:
        print(f"| {name:<12} | {rps:>11.0f} | {el:>7.2f} | {st:>9.2f} | {pa:>22.2f} | {mean:>6.3f} | {fmt:>6.2f} |")
    print(
        f"\n(the pathological answer is bounded at --timeout {args.timeout:g} s; mean R equal across modes = same verdicts)"
    )


if __name__ == "__main__":
    main()
