"""Megatron-Core's optimizer and learning-rate schedule for a run's ``optim`` section.

Owns: the ``DistributedDataParallelConfig`` / ``OptimizerConfig`` / ``OptimizerParamScheduler``
that match each other (mixed precision from ``model.dtype``, the distributed optimizer's grad
buffer layout, per-token loss scaling) and wrapping the model in Megatron DDP. On CPU the
distributed optimizer runs over gloo; ``_compat.megatron_optim_cpu`` makes Megatron's optimizer
code CPU-capable.

Does not own: the update itself (``rl.policy_step``) or checkpointing.
"""

from __future__ import annotations

from typing import Any

import megatron.core.optimizer as mcore_optimizer
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from srpo_mcore.config import OptimConfig


def ddp_config(cfg: OptimConfig) -> DistributedDataParallelConfig:
    """Megatron DDP's settings: fp32 gradient reduction, the distributed optimizer's buffers, overlap."""
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=cfg.distributed_optimizer,
        overlap_grad_reduce=cfg.overlap_grad_reduce,
        overlap_param_gather=cfg.overlap_param_gather,
    )


def optimizer_config(cfg: OptimConfig, dtype: str) -> OptimizerConfig:
    """Adam with fp32 main parameters under bf16/fp16, matching ``ddp_config``."""
    return OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_distributed_optimizer=cfg.distributed_optimizer,
        overlap_param_gather=cfg.overlap_param_gather,
    )


def prepare_for_training(model: Any, cfg: OptimConfig) -> DistributedDataParallel:
    """Wrap `model` in Megatron DDP with the settings the GRPO loss and optimizer expect."""
    config = model.config
    config.calculate_per_token_loss = True  # gradients normalised by Megatron's token count
    config.variable_seq_lengths = True  # micro-batches differ in shape (pipeline p2p sends shapes)
    config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(config, ddp_config(cfg), model)
    if cfg.overlap_grad_reduce:  # the schedules hold gradient sync until the last micro-batch's backward
        config.no_sync_func = ddp.no_sync
        config.grad_sync_func = ddp.start_grad_sync
    if cfg.overlap_param_gather:  # ... and dispatch the next bucket's parameter all-gather ahead of it
        config.param_sync_func = ddp.start_param_sync
    return ddp


def finish_param_sync(ddp_model: DistributedDataParallel) -> None:
    """With ``optim.overlap_param_gather`` the updated parameters arrive during the next forward
    pass; code that reads them first (the rollout refit, a checkpoint) waits for them here."""
    if ddp_model.ddp_config.overlap_param_gather:
        ddp_model.start_param_sync(force_sync=True)


def build_optimizer(
    ddp_model: DistributedDataParallel, cfg: OptimConfig, *, dtype: str, total_steps: int
) -> tuple[Any, OptimizerParamScheduler]:
    """Adam (+ fp32 main params under bf16/fp16) and its warmup/decay schedule."""
    ocfg = optimizer_config(cfg, dtype)
    optimizer = mcore_optimizer.get_megatron_optimizer(ocfg, [ddp_model])
    decay = max(total_steps, 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if cfg.warmup_steps else cfg.lr,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr if cfg.decay != "constant" else cfg.lr,
        lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=max(decay, cfg.warmup_steps + 1),
        lr_decay_style=cfg.decay,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def current_lr(optimizer: Any) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return float(optimizer.param_groups[0]["lr"])
