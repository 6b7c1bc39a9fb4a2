"""Layout and memory planner: what a recipe needs per GPU, and the step time its FLOPs imply.

``python -m srpo_mcore.plan --config examples/grpo_32b.yaml [--gpus 32] [--gpu-memory 80] [--mfu 0.4]``

Owns the arithmetic, from the architecture (``Qwen25VLArch``) and the recipe, for the recipe's
layout and every alternative TP x PP at the same GPU count (CP as the recipe sets it):

- parameters, counted from the shapes (equal to HF ``Qwen2_5_VLForConditionalGeneration``'s);
- memory per GPU in the train phase: bf16 weights (stage and TP shard; the embedding on the first
  stage, the LM head on the last, the vision tower on the first), fp32 gradient buffers of the
  trainable parameters, the distributed optimizer's fp32 master + Adam moments sharded over DP,
  TE's FP8 weight copies under ``model.fp8``, activations of one micro-batch
  (``train.micro_batch_tokens``) for the chosen recompute, held for ``pp`` micro-batches on the first
  stage (1F1B), and the fp32 logits of the loss;
- memory in the rollout phase: the trainer's weights, gradients and optimizer stay resident while
  the vLLM engine takes ``rollout.gpu_memory_utilization`` of the GPU (its weights at ``rollout_tp``
  + KV cache); the engine sleeps (weights to host, KV cache freed) while the trainer trains;
- FLOPs per step: the policy update (forward + backward, + one forward under full recompute) for
  ``train.updates_per_step`` passes over the step's tokens, the behaviour (and reference) logprob
  forwards, causal attention, the vision tower's forward in every pass; and the time those take
  on ``--gpus`` GPUs at ``--mfu`` of the dense bf16 peak. Rollout (generation) time is not modelled.

Activation bytes per token of one decoder layer follow what the layers save for backward (both
specs run flash-style attention: PyTorch SDPA in the local spec, TE's flash/fused backends on GPU,
which keep the output and its log-sum-exp, never the ``s x s`` probabilities). Checked against the
bytes the tiny model saves on CPU (``tests/dist/test_plan_memory.py``). It is a plan, not a measurement: allocator
fragmentation, NCCL buffers and CUDA context (~2-4 GB) come on top.

Does not own: building anything; it imports no model code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from srpo_mcore.config import RunConfig, add_config_args, config_from_args
from srpo_mcore.models.qwen2_5_vl.config import PRESETS, Qwen25VLArch, TextArch, VisionArch

GB = 1e9
H100_BF16_DENSE_TFLOPS = 989.0


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a Qwen2.5-VL, by part."""

    embedding: int
    per_layer: int
    layer_linear: int
    """Of ``per_layer``: the linear weights (QKV, output projection, MLP) FP8 applies to."""
    layers: int
    final_norm: int
    lm_head: int
    vision: int

    @property
    def language(self) -> int:
        return self.embedding + self.per_layer * self.layers + self.final_norm + self.lm_head

    @property
    def total(self) -> int:
        return self.language + self.vision


def text_layer_params(t: TextArch) -> tuple[int, int]:
    """(all parameters, linear weights) of one decoder layer."""
    h, f, kv = t.hidden_size, t.ffn_hidden_size, t.num_query_groups * t.head_dim
    linear = h * (h + 2 * kv) + h * h + 3 * h * f
    return linear + (h + 2 * kv) + 2 * h, linear  # + QKV bias + two RMSNorms


def vision_params(v: VisionArch) -> int:
    """The vision tower: patch embedding, blocks, patch merger."""
    h, i = v.hidden_size, v.intermediate_size
    block = (3 * h * h + 3 * h) + (h * h + h) + (2 * (h * i + i) + (i * h + h)) + 2 * h
    merged = h * v.spatial_merge_size**2
    merger = h + (merged * merged + merged) + (merged * v.out_hidden_size + v.out_hidden_size)
    return v.patch_dim * h + v.depth * block + merger


def count_params(arch: Qwen25VLArch) -> ParamCounts:
    t = arch.text
    per_layer, linear = text_layer_params(t)
    embedding = t.vocab_size * t.hidden_size
    return ParamCounts(
        embedding=embedding,
        per_layer=per_layer,
        layer_linear=linear,
        layers=t.num_layers,
        final_norm=t.hidden_size,
        lm_head=0 if t.tie_word_embeddings else embedding,
        vision=vision_params(arch.vision),
    )


def layer_activation_bytes_per_token(
    t: TextArch,
    *,
    tp: int,
    sp: bool,
    dtype_bytes: int,
    recompute: str,
    modules: Sequence[str] = ("core_attn",),
) -> float:
    """Bytes one decoder layer keeps for backward, per token (flash / SDPA core attention).

    Counted from what the layers save (measured on the tiny model, tests/dist/test_plan_memory.py):
    each RMSNorm its input and normalised input, each linear its input, the QKV output buffer, Q and
    K after mRoPE and their cos/sin tables, the attention output and its log-sum-exp, the SwiGLU's
    fc1 output, gate/up halves and fc2 input. recompute: none | selective (`modules` of core_attn /
    mlp recomputed) | full (each layer's input and RoPE tables only).
    """
    h, f, kv, d = t.hidden_size, t.ffn_hidden_size, t.num_query_groups * t.head_dim, t.head_dim
    seq_shard = tp if sp else 1
    if recompute == "full":  # each layer's input, and the mRoPE cos/sin its checkpoint keeps
        return (h / seq_shard + 2 * d) * dtype_bytes
    selective = set(modules) if recompute == "selective" else set()
    replicated = 6 * h + 4 * d  # norm inputs and outputs, QKV / fc1 inputs; RoPE tables
    sharded: float = (h + 2 * kv) + h + kv + h  # QKV buffer, Q and K after RoPE, output projection input
    if "core_attn" not in selective:
        sharded += h + t.num_attention_heads * 4 / dtype_bytes  # attention output, fp32 log-sum-exp
    if "mlp" not in selective:
        sharded += 5 * f  # fc1 output (gate | up), SiLU(gate) and its product, fc2 input
    return (replicated / seq_shard + sharded / tp) * dtype_bytes


@dataclass(frozen=True)
class Plan:
    tp: int
    pp: int
    cp: int
    dp: int
    weights: float
    grads: float
    optimizer: float
    fp8_copies: float
    activations: float
    logits: float
    engine: float
    engine_weights: float
    """Of ``engine``: the engine's weights at ``parallel.rollout_tp`` (FP8 linears under
    ``rollout.precision=fp8``); the rest is its KV cache."""
    train_flops: float

    @property
    def kv_cache(self) -> float:
        return self.engine - self.engine_weights

    @property
    def train_phase(self) -> float:
        return self.weights + self.grads + self.optimizer + self.fp8_copies + self.activations + self.logits

    @property
    def rollout_phase(self) -> float:
        return self.weights + self.grads + self.optimizer + self.fp8_copies + self.engine


def plan_layout(
    cfg: RunConfig,
    arch: Qwen25VLArch,
    *,
    tp: int,
    pp: int,
    gpus: int,
    gpu_memory_gb: float,
    tokens_per_step: float,
    image_tokens_per_step: float = 0.0,
) -> Plan:
    """Memory per GPU (bytes; of the heavier of the first and the last pipeline stage) and step FLOPs."""
    m, p, o = cfg.model, cfg.parallel, cfg.optim
    cp = p.cp
    dp = gpus // (tp * pp * cp)
    c = count_params(arch)
    wbytes = 2 if m.dtype in ("bf16", "fp16") else 4
    layers_here = c.layers / pp
    tokens = cfg.train.micro_batch_tokens / cp

    def layer_bytes(recompute: str) -> float:
        return tokens * layer_activation_bytes_per_token(
            arch.text,
            tp=tp,
            sp=p.sequence_parallel,
            dtype_bytes=wbytes,
            recompute=recompute,
            modules=m.recompute_modules,
        )

    recompute_peak = layer_bytes("none") if m.recompute == "full" else 0.0  # the layer being recomputed
    logits_bytes = tokens * arch.text.vocab_size / tp * 4 * 2  # fp32 logits and their log-softmax
    optimizer_state = 12 if wbytes == 2 else 8  # fp32 master + m + v (fp32 training: m + v)
    shards = dp * cp if o.distributed_optimizer else 1
    stages = []  # the first stage (embedding, vision tower, pp micro-batches in flight: 1F1B), the last
    for first in (True, False):
        own = (c.embedding if first else 0) + (c.lm_head if not first or pp == 1 else 0)
        if pp == 1:
            own = c.embedding + c.lm_head
        lm_here = (c.per_layer * layers_here + own) / tp
        vision_here = c.vision / tp if first else 0.0
        trainable = lm_here + (0 if m.freeze_vision else vision_here)
        in_flight = pp if first else 1
        stages.append(
            (
                (lm_here + vision_here) * wbytes,
                trainable * 4,  # fp32 gradient buffer (grad_reduce_in_fp32)
                trainable * optimizer_state / shards,
                c.layer_linear * layers_here / tp if m.fp8 != "none" else 0.0,
                layer_bytes(m.recompute) * layers_here * in_flight + recompute_peak,
                logits_bytes if (not first or pp == 1) else 0.0,
            )
        )
    weights, grads, optimizer, fp8, activations, logits = max(stages, key=sum)
    engine = cfg.rollout.gpu_memory_utilization * gpu_memory_gb * GB
    linear = c.layer_linear * c.layers
    served = (c.total - linear) * 2 + linear * (1 if cfg.rollout.precision == "fp8" else 2)
    engine_weights = served / p.rollout_tp
    # FLOPs: 2 per parameter per token forward, x3 with backward; causal attention 2 * 2 * s * d / 2
    seq = cfg.data.max_prompt_tokens / 2 + cfg.rollout.max_tokens / 2
    attn_per_token = 2 * arch.text.num_layers * seq * arch.text.num_attention_heads * arch.text.head_dim
    fwd_per_token = 2 * (c.per_layer * c.layers + c.lm_head + c.embedding * (c.lm_head == 0)) + attn_per_token
    h, f = arch.text.hidden_size, arch.text.ffn_hidden_size
    mlp_share = 3 * h * f / c.layer_linear if c.layer_linear else 0.0  # of a layer's forward FLOPs
    recomputed = {"full": 1.0, "selective": mlp_share * ("mlp" in m.recompute_modules)}.get(m.recompute, 0.0)
    update_passes = 3 + recomputed  # the mini-batches of train.updates_per_step partition the step's samples
    logprob_passes = 1 + (1 if cfg.grpo.kl_coef > 0 else 0)
    lm = tokens_per_step * fwd_per_token * (update_passes + logprob_passes)
    vision_passes = logprob_passes + (1 if m.freeze_vision else 3)
    vision = image_tokens_per_step * 2 * c.vision * vision_passes
    return Plan(
        tp, pp, cp, dp, weights, grads, optimizer, fp8, activations, logits, engine, engine_weights, lm + vision
    )


def candidate_layouts(gpus: int, cp: int, arch: Qwen25VLArch) -> list[tuple[int, int]]:
    """(tp, pp) with tp within a node (<= 8), dividing heads, KV groups and the vocabulary; pp dividing the layers."""
    t = arch.text
    out = []
    for tp in (1, 2, 4, 8):
        if (t.num_query_groups % tp and tp % t.num_query_groups) or t.num_attention_heads % tp or t.vocab_size % tp:
            continue
        for pp in range(1, t.num_layers + 1):
            if t.num_layers % pp == 0 and gpus % (tp * pp * cp) == 0:
                out.append((tp, pp))
    return out


def _arch(cfg: RunConfig) -> Qwen25VLArch:
    if cfg.model.hf_dir:
        return Qwen25VLArch.from_hf(cfg.model.hf_dir)
    if cfg.model.preset != "none":
        return PRESETS[cfg.model.preset]
    raise SystemExit("error: the recipe names neither model.hf_dir nor model.preset (set one with --set)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srpo_mcore.plan", description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the job (default 8: one node)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (H100: 80)")
    parser.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilisation of the trainer")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="dense bf16 peak per GPU")
    parser.add_argument("--image-tokens", type=float, default=1024, help="vision patches per prompt (before merging)")
    parser.add_argument("--top", type=int, default=12, help="rows to print")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    arch = _arch(cfg)
    p = cfg.parallel
    gpus = args.gpus
    c = count_params(arch)
    samples = cfg.data.prompts_per_step * cfg.rollout.n
    prompt_tokens, response_tokens = cfg.data.max_prompt_tokens / 2, cfg.rollout.max_tokens / 2
    tokens = samples * (prompt_tokens + response_tokens)
    image_tokens = samples * args.image_tokens
    plans = [
        plan_layout(
            cfg,
            arch,
            tp=tp,
            pp=pp,
            gpus=gpus,
            gpu_memory_gb=args.gpu_memory,
            tokens_per_step=tokens,
            image_tokens_per_step=image_tokens,
        )
        for tp, pp in candidate_layouts(gpus, p.cp, arch)
    ]
    limit = args.gpu_memory * GB
    step_s = {id(pl): pl.train_flops / (gpus * args.peak_tflops * 1e12 * args.mfu) for pl in plans}
    # 1F1B bubble: (pp - 1) / (micro-batches + pp - 1) of the time is idle on every stage
    micro = max(1.0, tokens / cfg.train.updates_per_step / cfg.train.micro_batch_tokens / max(1, gpus // (p.tp * p.pp)))
    for pl in plans:
        step_s[id(pl)] *= 1 + (pl.pp - 1) / micro
    plans.sort(key=lambda pl: (max(pl.train_phase, pl.rollout_phase) > limit, step_s[id(pl)], pl.train_phase))
    print(
        f"{cfg.name}: {c.total / 1e9:.2f}B parameters (language {c.language / 1e9:.2f}B, vision {c.vision / 1e9:.2f}B); "
        f"{gpus} GPUs x {args.gpu_memory:.0f} GB; step = {samples} samples x ({prompt_tokens:.0f} prompt + "
        f"{response_tokens:.0f} response tokens, assumed half of the limits) + {args.image_tokens:.0f} image patches; "
        f"micro-batch {cfg.train.micro_batch_tokens} tokens; recompute {cfg.model.recompute}; MFU {args.mfu:.0%}"
    )
    if plans:
        e = plans[0]
        kv = "" if e.kv_cache > 0 else " — NO ROOM FOR A KV CACHE: raise rollout.gpu_memory_utilization or rollout_tp"
        print(
            f"vLLM engine per GPU: {e.engine / GB:.1f} GB (gpu_memory_utilization {cfg.rollout.gpu_memory_utilization}): "
            f"weights {e.engine_weights / GB:.1f} GB at rollout_tp={p.rollout_tp} ({cfg.rollout.precision}), "
            f"KV cache {e.kv_cache / GB:.1f} GB{kv}"
        )
    head = (
        "layout",
        "weights",
        "grads",
        "optim",
        "fp8",
        "activ.",
        "logits",
        "train GB",
        "rollout GB",
        "fits",
        "step s",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for pl in plans[: args.top]:
        mark = " (recipe)" if (pl.tp, pl.pp) == (p.tp, p.pp) else ""
        fits = "yes" if max(pl.train_phase, pl.rollout_phase) <= limit else "no"
        cells = [f"TP{pl.tp} PP{pl.pp} CP{pl.cp} DP{pl.dp}{mark}"]
        cells += [
            f"{x / GB:.1f}" for x in (pl.weights, pl.grads, pl.optimizer, pl.fp8_copies, pl.activations, pl.logits)
        ]
        cells += [f"{pl.train_phase / GB:.1f}", f"{pl.rollout_phase / GB:.1f}", fits, f"{step_s[id(pl)]:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print(
        "train GB: weights + grads + optimizer + fp8 + activations + logits (the heavier of the first and last "
        "pipeline stage); rollout GB: trainer state + "
        f"the engine's {cfg.rollout.gpu_memory_utilization:.2f} x {args.gpu_memory:.0f} GB. Step s: trainer FLOPs "
        "(update, logprob passes, vision) at the MFU, with the 1F1B bubble; TP/PP communication and rollout time "
        "are not modelled. "
        "CUDA context, NCCL buffers and fragmentation (~2-4 GB) come on top."
    )
    return 0 if any(max(pl.train_phase, pl.rollout_phase) <= limit for pl in plans) else 1


if __name__ == "__main__":
    raise SystemExit(main())
