"""``python -m srpo_mcore.eval``: evaluate an HF checkpoint on MathVista, MathVerse, MathVision and
MMMU-Pro with the paper's protocol (greedy, <=4096 new tokens, last ``<answer>`` block).

Owns the command line only; the work is ``benchmarks``, ``run.evaluate`` and ``run.write_outputs``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence

from srpo_mcore.eval.benchmarks import PAPER_BENCHMARKS, EvalDataError, load_items, parse_benchmarks

EPILOG = """\
data root layout (local copies of the hub datasets, read offline):
  <root>/MathVista/data/testmini-*.parquet          (AI4Math/MathVista)
  <root>/MathVerse/testmini*.parquet                (AI4Math/MathVerse, config testmini)
  <root>/MathVision/data/{test,testmini}-*.parquet  (MathLLMs/MathVision)
  <root>/MMMU_Pro/standard (10 options)/test-*.parquet and <root>/MMMU_Pro/vision/test-*.parquet
  <root>/synthetic/{train,test}.jsonl               (python -m srpo_mcore.data.synthetic --out <root>/synthetic)
Splits: name:split, e.g. mathvision:testmini. mmmu_pro alone means both configurations.

outputs (--out): samples.jsonl (one line per question: id, prompt, response, final/first answer,
gold, correct), summary.json and summary.md (accuracy per benchmark, split and category, next to
the paper's numbers).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m srpo_mcore.eval",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="HF checkpoint directory, or a Megatron/training checkpoint (exported to HF first)",
    )
    p.add_argument(
        "--benchmarks",
        default=",".join(PAPER_BENCHMARKS),
        help="comma-separated name[:split] list from %(default)s, or synthetic (the package's own task) "
        "(default: the paper's four)",
    )
    p.add_argument("--data-root", required=True, help="directory holding the benchmarks' directories")
    p.add_argument("--prompt", choices=("srpo", "plain", "none"), default="srpo", help="system prompt format")
    p.add_argument("--max-tokens", type=int, default=4096, help="new tokens per response (paper: 4096)")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + response tokens (default max-tokens+4096)")
    p.add_argument("--limit", type=int, default=None, help="at most N questions per benchmark split")
    p.add_argument("--out", default="eval_out", help="output directory (replaced atomically)")
    p.add_argument(
        "--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="auto: bf16 on GPU, fp32 on CPU"
    )
    p.add_argument("--batch-size", type=int, default=64, help="questions per generate call")
    p.add_argument("--kv-cache-gib", type=float, default=4.0, help="CPU only: KV cache size")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="GPU only")
    p.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per math-verify comparison")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible API base URL of an LLM judge (off by default)")
    p.add_argument("--judge-model", default=None, help="judge model name at --judge-url")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="env var with the judge's API key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _as_hf_dir(model: str, out: str) -> str:
    """`model` itself when it is an HF checkpoint; a Megatron (e.g. training) checkpoint is first exported to HF
    next to the outputs (``<out>.model_hf``) with the converter library."""
    from pathlib import Path

    from srpo_mcore.checkpoint.convert import META, mcore_to_hf

    if not (Path(model) / META).exists():
        return model
    target = Path(out).with_name(Path(out).name + ".model_hf")
    print(f"{model} is a Megatron checkpoint: exporting it to {target} first", file=sys.stderr)
    return str(mcore_to_hf(model, target, force=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        selected = parse_benchmarks(args.benchmarks)
        items = [it for name, split in selected for it in load_items(name, split, args.data_root, args.limit)]
    except (ValueError, EvalDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if bool(args.judge_url) != bool(args.judge_model):
        print("error: --judge-url and --judge-model go together", file=sys.stderr)
        return 2
    if not items:
        print("error: no questions to evaluate", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoProcessor

    from srpo_mcore.config import RolloutConfig
    from srpo_mcore.eval.run import evaluate, markdown_table, summarize, write_outputs
    from srpo_mcore.rollout.engine import RolloutEngine

    dtype = args.dtype if args.dtype != "auto" else ("bf16" if torch.cuda.is_available() else "fp32")
    args.model = _as_hf_dir(args.model, args.out)
    cfg = RolloutConfig(
        n=1,
        max_tokens=args.max_tokens,
        max_model_len=args.max_model_len or args.max_tokens + 4096,
        max_images_per_prompt=max(len(it.images) for it in items),
        kv_cache_gib=args.kv_cache_gib,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    processor = AutoProcessor.from_pretrained(args.model)
    from srpo_mcore.eval.judge import JudgeConfig, LLMJudge

    judge = LLMJudge(JudgeConfig(args.judge_url, args.judge_model, args.judge_api_key_env)) if args.judge_url else None
    start = time.time()
    engine = RolloutEngine(args.model, cfg, dtype=dtype)
    try:
        results = evaluate(
            engine,
            items,
            processor.tokenizer,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            timeout_s=args.verify_timeout,
            progress=not args.no_progress,
            processor=processor,
            max_model_len=cfg.max_model_len,
            judge=judge,
        )
    finally:
        engine.close()
    summary = summarize(results)
    command = "python -m srpo_mcore.eval " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if judge is not None:
        summary["judge_failures"] = judge.failures
    run = {**vars(args), "dtype": dtype, "command": command, "seconds": round(time.time() - start, 1)}
    out = write_outputs(args.out, results, summary, run)
    print(markdown_table(summary))
    print(f"wrote {out}/samples.jsonl, summary.json, summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
