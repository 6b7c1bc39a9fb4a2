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


def prepare_for_training(model: Any, cfg: OptimConfig) -> DistributedDataParallel:
    """Wrap `model` in Megatron DDP with the settings the GRPO loss and optimizer expect."""
    config = model.config
    config.calculate_per_token_loss = True  # gradients normalised by Megatron's token count
    config.variable_seq_lengths = True  # micro-batches differ in shape (pipeline p2p sends shapes)
    config.finalize_model_grads_func = finalize_model_grads
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=cfg.distributed_optimizer,
        overlap_grad_reduce=False,
    )
    return DistributedDataParallel(config, ddp_cfg, model)


def build_optimizer(
    ddp_model: DistributedDataParallel, cfg: OptimConfig, *, dtype: str, total_steps: int
) -> tuple[Any, OptimizerParamScheduler]:
    """Adam (+ fp32 main params under bf16/fp16) and its warmup/decay schedule."""
    ocfg = OptimizerConfig(
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
    )
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
