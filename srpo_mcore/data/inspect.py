"""``python -m srpo_mcore.data.inspect FILES...``: what a job would make of a data set, before the job.

Prints, for the files together (exactly as the trainers load them, with the same caches): the
format detected per file, rows read / kept / skipped by reason with the first ids, images per row,
and with ``--model`` the histogram of prompt tokens (chat template, system prompt and image tokens
included) and how many rows ``--max-prompt-tokens`` would drop; with ``--sft`` also the histogram of
target (assistant) tokens. The first run indexes the files and checks every row (the job's start-up
work, cached next to the data); a later run, or the job itself, reuses it.

Owns only the command line and the text report; loading is ``rl_dataset.load_prompt_rows``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence

from srpo_mcore.config import DataConfig
from srpo_mcore.data.formats import FORMATS
from srpo_mcore.data.rl_dataset import DataError, load_prompt_rows

BINS = 10
"""Bars of a histogram."""
BAR = 40
"""Width of the longest bar."""


def histogram(values: Sequence[int], title: str) -> str:
    """A text histogram of `values` (equal-width bins) with its quantiles."""
    if not values:
        return f"{title}: no rows"
    ordered = sorted(values)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    lo, hi = ordered[0], ordered[-1]
    lines = [f"{title}: min {lo}  p50 {q(0.5)}  p90 {q(0.9)}  p99 {q(0.99)}  max {hi}  (n={len(values)})"]
    width = max(1, -(-(hi - lo + 1) // BINS))
    counts = Counter((v - lo) // width for v in values)
    top = max(counts.values())
    for b in range((hi - lo) // width + 1):
        n = counts.get(b, 0)
        start = lo + b * width
        bar = "#" * max(1 if n else 0, round(BAR * n / top))
        lines.append(f"  {start:>7}-{start + width - 1:<7} {n:>7}  {bar}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m srpo_mcore.data.inspect",
        description="Check a prompt or SFT data set the way a job will load it: format, skipped rows, "
        "images per row, prompt (and target) token histograms.",
    )
    p.add_argument("files", nargs="+", help="jsonl / json / parquet files or directories of them")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="data.format (default: auto)")
    p.add_argument("--model", help="HF model directory: its processor counts prompt tokens (image tokens included)")
    p.add_argument("--prompt", default="srpo", choices=("srpo", "plain", "none"), help="data.prompt (system prompt)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="data.max_prompt_tokens (default 1024)")
    p.add_argument("--sft", action="store_true", help="SFT data: the assistant turn is the target; show its tokens")
    p.add_argument("--image-root", help="data.image_root for relative image paths")
    p.add_argument("--cache-dir", help="data.cache_dir")
    for name in ("id", "question", "answer", "image"):
        p.add_argument(f"--{name}-field", help=f"data.{name}_field (rows format)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fields = {f"{n}_field": getattr(args, f"{n}_field") for n in ("id", "question", "answer", "image")}
    cfg = DataConfig(
        train_files=list(args.files),
        format=args.format,
        prompt=args.prompt,
        max_prompt_tokens=args.max_prompt_tokens,
        image_root=args.image_root,
        cache_dir=args.cache_dir,
        **{k: v for k, v in fields.items() if v},
    )
    processor = None
    if args.model:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
    try:
        rows, report = load_prompt_rows(
            cfg, progress=True, processor=processor, answer_from="response" if args.sft else "gold"
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    per_row = Counter(len(r.images) for r in rows)
    print("images per row: " + ", ".join(f"{k}: {per_row[k]}" for k in sorted(per_row)))
    if processor is None:
        print("prompt tokens: pass --model HF_DIR to count them (chat template and image tokens included)")
    else:
        print(histogram(rows.prompt_tokens(), f"prompt tokens (kept rows, <= {cfg.max_prompt_tokens})"))
        dropped = len(report.skipped.get("too_long", []))
        print(f"too long (> {cfg.max_prompt_tokens} prompt tokens): {dropped} rows")
    if args.sft:
        if processor is None:
            print("target tokens: pass --model HF_DIR to count them")
        else:
            tok = processor.tokenizer
            targets = [len(tok(r.answer + tok.eos_token, add_special_tokens=False).input_ids) for r in rows]
            print(histogram(targets, "target tokens (assistant turn + end of turn)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
