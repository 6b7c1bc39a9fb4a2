#!/usr/bin/env python
"""Benchmark one GRPO training step: our Megatron-Core trainer vs a plain HF-transformers loop.

Both sides train the same Qwen2.5-VL checkpoint on the same fixed batch (seeded random text-only
prompts and responses, a mixed-sign advantage per sequence, rollout logprobs), split into the same
micro-batches (``rl.batch.plan_micro_batches`` + ``collate``). One GRPO step is, on both sides:

1. a forward-only pass computing the old logprobs of the response tokens;
2. forward + backward of the PPO-clip loss, token mean over every response token of the batch,
   micro-batch by micro-batch;
3. an Adam step (``OptimConfig`` defaults: lr, betas, eps, weight decay 0) after clipping the
   global gradient norm to 1.0.

- srpo-mcore: ``Qwen25VLModel`` (TP=1, local spec) + ``load_hf_weights``, ``prepare_for_training`` +
  ``build_optimizer`` (Megatron DDP, distributed optimizer), ``forward_logprobs`` + ``train_step``.
- HF transformers: ``Qwen2_5_VLForConditionalGeneration``, logprobs by log_softmax + gather,
  ``rl.loss.policy_loss`` scaled by each micro-batch's share of the response tokens,
  ``clip_grad_norm_``, ``torch.optim.AdamW``. Under bf16 it keeps fp32 weights and runs the model in
  ``torch.autocast`` (fp32 master weights and Adam state, like Megatron's mixed precision).

Each side runs in its own spawned process so that its peak memory (CPU: VmHWM; GPU:
``max_memory_allocated``) is its own. HF runs first; ours must reproduce its first-step loss, mean
old logprob and gradient norm before it is timed, otherwise the comparison is void and the bench
fails. On a GPU the table also shows MFU.

    .venv/bin/python tools/bench_train.py [--config small] [--batch 16] [--prompt-len 128]
        [--response-len 384] [--micro-batch-tokens 2048] [--warmup 1] [--steps 3] [--dtype auto]

Legend: ``B`` sequences of a micro-batch, ``S`` padded length, ``V`` vocabulary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from srpo_mcore.rl.batch import MicroBatch, TrainSequence, collate, plan_micro_batches

# The "small" model of tools/bench_model.py: the tiny "gqa" checkpoint widened and deepened.
SMALL_TEXT: dict[str, Any] = dict(
    num_layers=4,
    hidden_size=256,
    ffn_hidden_size=688,
    num_attention_heads=8,
    num_query_groups=2,
    mrope_section=(4, 6, 6),
)
# First-step agreement between the two sides: (loss abs, mean old logprob abs, grad norm relative).
TOLERANCE = {"fp32": (1e-4, 1e-4, 1e-3), "bf16": (1e-2, 5e-2, 5e-2)}
HF_NAME = "HF transformers"
OURS_NAME = "srpo-mcore (Megatron-Core, local spec)"


@dataclass(frozen=True)
class Bench:
    """Everything a worker process needs to rebuild the batch and the model."""

    hf_dir: str
    dtype: str
    batch: int
    prompt_len: int
    response_len: int
    micro_batch_tokens: int
    warmup: int
    steps: int
    seed: int
    text_vocab: int
    """Token ids are drawn from ``[0, text_vocab)``: no special or vision placeholder tokens."""
    pad_id: int


def make_batch(spec: Bench) -> list[TrainSequence]:
    """The fixed, seeded batch both sides train on."""
    gen = torch.Generator().manual_seed(spec.seed)
    adv_B = torch.randn(spec.batch, generator=gen).abs()
    adv_B[1::2] *= -1  # mixed sign; not zero-mean, so the first-step loss (-token mean of A) is not 0
    out = []
    for b in range(spec.batch):
        ids = torch.randint(0, spec.text_vocab, (spec.prompt_len + spec.response_len,), generator=gen).tolist()
        rollout = (-torch.empty(spec.response_len).exponential_(generator=gen)).tolist()
        out.append(
            TrainSequence(
                prompt_ids=tuple(ids[: spec.prompt_len]),
                response_ids=tuple(ids[spec.prompt_len :]),
                advantage=float(adv_B[b]),
                rollout_logprobs=tuple(rollout),
            )
        )
    return out


def micro_batches(spec: Bench, sequences: list[TrainSequence], device: torch.device) -> list[MicroBatch]:
    """The same micro-batch plan and tensors for both sides."""
    plan = plan_micro_batches([len(s) for s in sequences], spec.micro_batch_tokens)
    return [collate(sequences, part, pad_id=spec.pad_id).to(device) for part in plan]


def _status_bytes(field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process from /proc (0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _mean_logprob(mbs: list[MicroBatch], lps: list[torch.Tensor]) -> float:
    total = sum(float((lp * mb.loss_mask_BS).sum()) for mb, lp in zip(mbs, lps))
    return total / sum(mb.num_response_tokens for mb in mbs)


def _run_steps(
    spec: Bench,
    label: str,
    step: Callable[[], dict[str, float]],
    first_extra: Callable[[], dict[str, float]],
    check: Callable[[dict[str, float]], bool],
) -> dict[str, Any]:
    """First step (checked), the remaining warm-up steps, then the timed ones; time and memory."""
    gpu = torch.cuda.is_available()
    setup_rss = _status_bytes("VmRSS")
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    first: dict[str, float] = {}
    for i in range(spec.warmup + spec.steps):
        start = time.perf_counter()
        out = step()
        if gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        kind = "warm-up" if i < spec.warmup else "timed"
        print(f"  {label}: step {i + 1}/{spec.warmup + spec.steps} ({kind}) {elapsed:.2f} s", flush=True)
        if i == 0:
            first = {**out, **first_extra()}
            if not check(first):
                return {"first": first, "times": [], "mismatch": True}
        if i >= spec.warmup:
            times.append(elapsed)
    peak = torch.cuda.max_memory_allocated() if gpu else _status_bytes("VmHWM")
    return {"first": first, "times": times, "peak_bytes": peak, "setup_rss": setup_rss, "mismatch": False}


def hf_worker(spec: Bench) -> dict[str, Any]:
    """The plain HF-transformers GRPO step (runs in its own process)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from srpo_mcore.config import GRPOConfig, OptimConfig
    from srpo_mcore.rl.loss import policy_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(spec.seed)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec.hf_dir, dtype=torch.float32).to(device)
    hf.train()
    o, grpo = OptimConfig(), GRPOConfig()
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps, weight_decay=o.weight_decay
    )
    sequences = make_batch(spec)
    mbs = micro_batches(spec, sequences, device)
    adv_B = [torch.tensor([sequences[i].advantage for i in mb.index_B], device=device) for mb in mbs]
    total = float(sum(mb.num_response_tokens for mb in mbs))
    share = [mb.num_response_tokens / total for mb in mbs]
    old_BS: list[torch.Tensor] = []

    def logprobs(mb: MicroBatch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.dtype == "bf16"):
            logits_BSV = hf(input_ids=mb.input_ids_BS, position_ids=mb.position_ids_3BS, use_cache=False).logits
        return torch.log_softmax(logits_BSV.float(), dim=-1).gather(-1, mb.targets_BS.unsqueeze(-1)).squeeze(-1)

    def step() -> dict[str, float]:
        with torch.no_grad():
            old_BS[:] = [logprobs(mb) for mb in mbs]
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for mb, old, adv, w in zip(mbs, old_BS, adv_B, share):
            loss, _ = policy_loss(
                logprobs(mb), old, adv, mb.loss_mask_BS, clip_low=grpo.clip_low, clip_high=grpo.clip_high
            )
            (loss * w).backward()  # sum of share-weighted micro-batch means = global token mean
            loss_sum += loss.detach() * w
        norm = torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
        opt.step()
        return {"loss": loss_sum.item(), "grad_norm": norm.item()}

    return _run_steps(spec, "HF", step, lambda: {"old_logprob": _mean_logprob(mbs, old_BS)}, lambda _: True)


def ours_worker(spec: Bench, reference: dict[str, float]) -> dict[str, Any]:
    """Our trainer's GRPO step (runs in its own process; stops untimed if it disagrees with HF)."""
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.config import GRPOConfig, OptimConfig
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.optim import build_optimizer, prepare_for_training
    from srpo_mcore.rl.policy_step import forward_logprobs, train_step

    init_parallel(ParallelDims())
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    torch.manual_seed(spec.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(spec.seed)
    arch = Qwen25VLArch.from_hf(spec.hf_dir)
    model = Qwen25VLModel(arch, ModelLayout(dtype=spec.dtype, init_weights=False)).to(device)
    load_hf_weights(model, spec.hf_dir)
    # Parameters doing matmuls on text: decoder + output layer (no vision tower, no input embedding).
    lm = model.language_model
    n_params = sum(p.numel() for p in lm.parameters())
    if not arch.text.tie_word_embeddings:
        n_params -= lm.embedding.word_embeddings.weight.numel()
    o, grpo = OptimConfig(), GRPOConfig()
    ddp = prepare_for_training(model, o)
    optimizer, _ = build_optimizer(ddp, o, dtype=spec.dtype, total_steps=spec.warmup + spec.steps)
    mbs = micro_batches(spec, make_batch(spec), device)

    def step() -> dict[str, float]:
        forward_logprobs([ddp], mbs, name="old_logprobs")
        out = train_step([ddp], optimizer, mbs, grpo)
        return {"loss": out["loss"], "grad_norm": out["grad_norm"]}

    def first_extra() -> dict[str, float]:
        return {"old_logprob": _mean_logprob(mbs, [mb.local["old_logprobs"] for mb in mbs])}

    result = _run_steps(spec, "ours", step, first_extra, lambda first: not disagreements(reference, first, spec.dtype))
    destroy_parallel()
    return {**result, "n_params": n_params}


def disagreements(hf: dict[str, float], ours: dict[str, float], dtype: str) -> list[str]:
    """Which first-step quantities differ beyond the tolerance of `dtype` (empty: they agree)."""
    tol_loss, tol_lp, tol_norm = TOLERANCE[dtype]
    out = []
    if abs(hf["loss"] - ours["loss"]) > tol_loss:
        out.append(f"loss |diff| {abs(hf['loss'] - ours['loss']):.3e} > {tol_loss:g}")
    if abs(hf["old_logprob"] - ours["old_logprob"]) > tol_lp:
        out.append(f"mean old logprob |diff| {abs(hf['old_logprob'] - ours['old_logprob']):.3e} > {tol_lp:g}")
    rel = abs(hf["grad_norm"] - ours["grad_norm"]) / max(abs(hf["grad_norm"]), 1e-12)
    if rel > tol_norm:
        out.append(f"grad norm relative diff {rel:.3e} > {tol_norm:g}")
    return out


def checkpoint_dir(config: str, tmp: str, seed: int) -> tuple[str, Path]:
    """(HF checkpoint directory to benchmark, tiny checkpoint directory holding the tokenizer)."""
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    tiny = build_tiny_checkpoint("gqa" if config == "small" else config)
    if config != "small":
        return str(tiny), tiny
    from transformers import AutoModelForImageTextToText

    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch

    arch = Qwen25VLArch.from_hf(tiny)
    arch = replace(
        arch,
        text=replace(arch.text, **SMALL_TEXT),
        vision=replace(arch.vision, out_hidden_size=int(SMALL_TEXT["hidden_size"])),
    )
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(arch.to_hf()).save_pretrained(tmp)
    return tmp, tiny


def _mem(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    from srpo_mcore.tiny.checkpoints import TINY_CONFIGS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        choices=["small", *TINY_CONFIGS],
        default="small",
        help="model: tools/bench_model.py's 'small' (4 layers, hidden 256) or a tiny checkpoint (default small)",
    )
    parser.add_argument("--batch", type=int, default=16, help="sequences per GRPO step (default 16)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per sequence (default 128)")
    parser.add_argument("--response-len", type=int, default=384, help="response tokens per sequence (default 384)")
    parser.add_argument(
        "--micro-batch-tokens", type=int, default=2048, help="token budget of one micro-batch (default 2048)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first; the first is checked (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported (default 3)")
    parser.add_argument(
        "--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on a GPU, fp32 on CPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per side (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU peak TFLOP/s for MFU (default 989: H100 SXM bf16 dense)"
    )
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first warm-up step is the checked one)")
    if min(args.batch, args.prompt_len, args.response_len, args.micro_batch_tokens) < 1:
        parser.error("--batch, --prompt-len, --response-len and --micro-batch-tokens must be >= 1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from transformers import AutoTokenizer

    from srpo_mcore.parallel.launch import spawn

    gpu = torch.cuda.is_available()
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if gpu else "fp32")
    threads = args.threads or os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, tiny = checkpoint_dir(args.config, tmp, args.seed)
        tok = AutoTokenizer.from_pretrained(tiny)
        specials = list(tok.added_tokens_decoder)
        spec = Bench(
            hf_dir=hf_dir,
            dtype=dtype,
            batch=args.batch,
            prompt_len=args.prompt_len,
            response_len=args.response_len,
            micro_batch_tokens=args.micro_batch_tokens,
            warmup=args.warmup,
            steps=args.steps,
            seed=args.seed,
            text_vocab=min(specials) if specials else len(tok),
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        )
        n_mb = len(plan_micro_batches([args.prompt_len + args.response_len] * args.batch, args.micro_batch_tokens))
        tokens = args.batch * (args.prompt_len + args.response_len)
        print(
            f"GRPO step: {args.batch} x ({args.prompt_len} prompt + {args.response_len} response) = {tokens} tokens, "
            f"{n_mb} micro-batches of <= {args.micro_batch_tokens} tokens; {args.warmup} warm-up + {args.steps} timed "
            f"steps per side, each in its own process",
            flush=True,
        )
        print(f"[1/2] {HF_NAME}", flush=True)
        hf = spawn(hf_worker, 1, spec, threads=threads)[0]
        print(f"[2/2] {OURS_NAME}", flush=True)
        ours = spawn(ours_worker, 1, spec, hf["first"], threads=threads)[0]

    a, b = hf["first"], ours["first"]
    tol = TOLERANCE[dtype]
    print(
        f"\nfirst-step agreement ({dtype}; tolerance: loss {tol[0]:g} abs, old logprob {tol[1]:g} abs, grad norm {tol[2]:g} rel)"
    )
    for key, name in (("loss", "loss"), ("old_logprob", "mean old logprob"), ("grad_norm", "grad norm")):
        print(f"  {name:<17} HF {a[key]:+.8f}  ours {b[key]:+.8f}  |diff| {abs(a[key] - b[key]):.2e}")
    print(
        "  (step 1 recomputes the old logprobs with the same weights, so its ratio is 1 and its loss is "
        "-token-mean(A) for any model; the old logprob and the grad norm test the model and the loss scaling)"
    )
    problems = disagreements(a, b, dtype)
    if ours["mismatch"] or problems:
        sys.exit(
            "bench_train: the two implementations disagree on the first GRPO step ("
            + "; ".join(problems)
            + "): they do not compute the same update, so their speeds are not comparable; ours was not timed."
        )

    n_params = ours["n_params"]
    rows = [(HF_NAME, hf), (OURS_NAME, ours)]
    hf_tps = tokens / statistics.median(hf["times"])
    print(
        f"\nQwen2.5-VL {args.config}: {n_params / 1e6:.2f}M text matmul parameters, {dtype} on "
        f"{'cuda' if gpu else 'cpu'} ({threads} thread{'s' if threads > 1 else ''} per side)"
    )
    head = f"| {'impl':<40} | {'tokens/step':>11} | {'step s (median)':>15} | {'tokens/s':>9} | {'peak mem':>9} | {'vs HF':>6} |"
    print(head + (f" {'MFU':>6} |" if gpu else ""))
    print(f"|{'-' * 42}|{'-' * 13}|{'-' * 17}|{'-' * 11}|{'-' * 11}|{'-' * 8}|" + ("--------|" if gpu else ""))
    for name, r in rows:
        step_s = statistics.median(r["times"])
        tps = tokens / step_s
        line = f"| {name:<40} | {tokens:>11} | {step_s:>15.3f} | {tps:>9.0f} | {_mem(r['peak_bytes']):>9} | {tps / hf_tps:>6.2f} |"
        if gpu:
            line += f" {6 * n_params * tps / (args.peak_tflops * 1e12):>6.1%} |"
        print(line)
    print(
        "\ntokens/s = (prompt + response) tokens of the batch / median wall time of one GRPO step "
        "(old-logprob forward + forward/backward over the micro-batches + clipped Adam step)."
    )
    if gpu:
        print(
            "peak mem = torch.cuda.max_memory_allocated over the steps (weights, grads, optimizer state, activations)."
        )
        print(
            f"MFU = 6 x {n_params / 1e6:.2f}M params x tokens/s / {args.peak_tflops:g} TFLOP/s (--peak-tflops; "
            "default = H100 SXM bf16 dense); the forward-only logprob pass and attention FLOPs are not counted."
        )
    else:
        print(
            "peak mem = VmHWM (peak RSS) of the side's own process, imports and model load included "
            f"(RSS before the first step: HF {_mem(hf['setup_rss'])}, ours {_mem(ours['setup_rss'])})."
        )
    cores = os.cpu_count() or 1
    if load_before > 0.5 * cores:  # measured before our own workers ran (they would count themselves)
        print(
            f"warning: 1-min load average {load_before:.1f} on {cores} cores before the run: "
            "other processes compete for the CPU and the timings are noisy; a thread that loses its core stalls every "
            "parallel op of its side, so rerun on an idle machine or with --threads 1."
        )


if __name__ == "__main__":
    main()
