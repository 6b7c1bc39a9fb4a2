"""SRPO stage 1: supervised fine-tuning on the reflection set, on Megatron-Core (``SFTTrainer``).

Run by ``python -m srpo_mcore.sft --config RECIPE.yaml [--set k=v ...]`` (the command line is
``srpo_mcore.sft``; under torchrun or srun). Rows are
prompt rows (``data``: question, images, and the target response in ``data.answer_field``); each
becomes ``chat template(system prompt, user turn) + response + <|im_end|>`` and the loss is the
token mean of the negative log-likelihood over the assistant tokens only (the response and its
closing ``<|im_end|>``), over the whole global batch (Megatron's per-token loss normalisation, so
the split into micro-batches and data-parallel ranks does not matter). The vision tower and merger
stay frozen by default (``model.freeze_vision``); cosine/linear schedules with warmup
``sft.warmup_ratio``; checkpoints, resume, metrics, plots and the final HF export are the shared
trainer core's — the exported ``hf/`` directory is the RL stage's ``model.hf_dir``.

Owns: turning a row into a training sequence with its loss mask (``sft_sequence``), the SFT loss
step (``sft_step``) and ``SFTTrainer``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from srpo_mcore.observe.rank0_log import get_logger
from srpo_mcore.rl.batch import MicroBatch, TrainSequence, VisionInputs
from srpo_mcore.trainer_core import MegatronTrainer

log = get_logger("srpo_mcore.sft")


def sft_sequence(row: Any, processor: Any, kind: str, position_ids: Any = None) -> TrainSequence:
    """The training sequence of one SFT row: prompt tokens (images expanded) + assistant tokens.

    The assistant tokens are the response followed by the tokenizer's end-of-turn token (what the
    policy must learn to stop with); the chat template's newline after it carries no loss.

    Args:
        row: A ``PromptRow`` whose ``answer`` is the target response.
        processor: The model's HF processor.
        kind: ``data.prompt`` (system prompt kind).
        position_ids: ``model.position_ids`` (for mRoPE positions of image prompts); None = text positions.
    """
    from srpo_mcore.data.rl_dataset import chat_prompt, open_images

    tok = processor.tokenizer
    images = list(open_images(row))
    enc = processor(text=[chat_prompt(row, tok, kind)], images=images or None, return_tensors="pt")
    prompt_ids = enc["input_ids"][0].tolist()
    response_ids = tok(row.answer + tok.eos_token, add_special_tokens=False).input_ids
    vision = VisionInputs(enc["pixel_values"], enc["image_grid_thw"]) if images else None
    positions = None
    if position_ids is not None:
        positions = position_ids(enc["input_ids"], image_grid_thw=vision.image_grid_thw if vision else None)[:, 0]
    zeros = (0.0,) * len(response_ids)
    return TrainSequence(tuple(prompt_ids), tuple(response_ids), 1.0, zeros, vision, 0, positions)


def sft_step(model: Sequence[Any], optimizer: Any, micro_batches: Sequence[MicroBatch]) -> dict[str, float]:
    """One optimizer update of the token-mean NLL over the assistant tokens; metrics on every rank."""
    from srpo_mcore.rl.logprobs import token_logprobs
    from srpo_mcore.rl.policy_step import cp_local, reduce_sums, run_schedule

    def loss_fn(mb: MicroBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lp = token_logprobs(logits, cp_local(mb.targets_BS))
        mask = cp_local(mb.loss_mask_BS)
        loss = -(lp * mask).sum()
        sums = torch.stack([mask.sum(), loss.detach()]).double().cpu()
        return loss, mask.sum().round().to(torch.int), {"sums": sums}

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_schedule(model, micro_batches, loss_fn, forward_only=False)
    ok, grad_norm, _ = optimizer.step()
    sums = torch.zeros(2, dtype=torch.float64)
    for r in reports:
        sums += r["sums"]
    tokens, nll = reduce_sums(sums).tolist()
    return {
        "loss": nll / max(tokens, 1.0),
        "tokens": tokens,
        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        "update_ok": float(bool(ok)),
    }


class SFTTrainer(MegatronTrainer):
    """Stage-1 SFT run on this rank (construct on every rank; collective)."""

    name = "sft"
    answer_from = "response"

    def rows_per_step(self) -> int:
        return self.cfg.sft.batch_size

    def optim_config(self) -> Any:
        ratio = self.cfg.sft.warmup_ratio
        if ratio <= 0:
            return self.cfg.optim
        return dataclasses.replace(self.cfg.optim, warmup_steps=max(1, round(ratio * self.total_steps)))

    def train_one_step(self) -> dict[str, float]:
        from srpo_mcore.rl.batch import shard_for_dp
        from srpo_mcore.rl.optim import current_lr

        t0 = time.perf_counter()
        rows = [self.rows[i] for i in self.sampler.next(self.cfg.sft.batch_size)]
        sequences, too_long = [], 0
        for row in rows:
            seq = sft_sequence(row, self.processor, self.cfg.data.prompt, self.model.position_ids)
            if len(seq) > self.cfg.sft.max_seq_len:
                too_long += 1
                continue
            sequences.append(seq)
        if not sequences:
            raise RuntimeError(f"step {self.step + 1}: every sample is longer than sft.max_seq_len")
        mbs = self.micro_batches(sequences, shard_for_dp(sequences, self.dp_rank, self.dp_size))
        t1 = time.perf_counter()
        metrics = {f"train/{k}": v for k, v in sft_step([self.ddp], self.optimizer, mbs).items()}
        self.scheduler.step(1)
        self.step += 1
        t2 = time.perf_counter()
        tokens = sum(len(s) for s in sequences)
        metrics.update(
            {
                "train/lr": current_lr(self.optimizer),
                "data/skipped_too_long": float(too_long),
                "perf/train_tokens_per_s": tokens / max(t2 - t1, 1e-9),
                "time/data_s": t1 - t0,
                "time/train_s": t2 - t1,
                "time/step_s": t2 - t0,
            }
        )
        return metrics
