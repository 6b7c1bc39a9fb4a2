"""The current main job: train the tiny Megatron-Core language model for a few steps at a layout.

Owns: a self-contained check that the whole foundation works together on this machine —
config, process groups (gloo on CPU / NCCL on GPU), the CPU compatibility layer, the Megatron-Core
decoder at the recipe's TP/SP layout, Megatron DDP gradient finalisation and an Adam step — by
overfitting one fixed random batch and printing the loss falling on rank 0.

It stands in for the end-to-end SRPO run (issue #11), which will replace it as the README's first
command. Run it under torchrun: ``torchrun --nproc_per_node 2 -m srpo_mcore.smoke --config R.yaml``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from srpo_mcore.config import ConfigError, add_config_args, config_from_args


def main(argv: Sequence[str] | None = None) -> int:
    """Overfit one batch with the tiny decoder at the recipe's layout; print the loss curve."""
    parser = argparse.ArgumentParser(prog="python -m srpo_mcore.smoke", description=main.__doc__)
    add_config_args(parser)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (default 32)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        parser.error(str(e))

    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from tqdm import tqdm

    from srpo_mcore.models.language_model import build_language_model
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel

    p = cfg.parallel
    dims = ParallelDims(tp=p.tp, pp=p.pp, cp=p.cp, vpp=p.vpp, sequence_parallel=p.sequence_parallel)
    if p.pp > 1 or p.cp > 1:
        parser.error("the smoke job runs TP/SP/DP layouts; PP and CP arrive with the Qwen2.5-VL model (issue #3)")
    env = init_parallel(dims, backend=p.backend)
    rank0 = env.rank == 0
    torch.manual_seed(cfg.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    model = build_language_model(cfg.model, p)
    device = torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len + 1), generator=gen).to(device)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(args.seq_len, device=device).unsqueeze(0).expand(args.batch, -1)

    if rank0:
        n_params = sum(q.numel() for q in model.parameters())
        print(
            f"smoke: world={env.world_size} tp={p.tp} sp={p.sequence_parallel} dp={dims.dp(env.world_size)} "
            f"params/rank={n_params:,} device={device.type}",
            flush=True,
        )
    losses = []
    start = time.perf_counter()
    for _ in tqdm(range(args.steps), desc="smoke", disable=not rank0):
        ddp.zero_grad_buffer()
        optim.zero_grad(set_to_none=True)
        logits = ddp(inputs, pos, attention_mask=None)
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels).mean()
        loss.backward()
        finalize_model_grads([ddp])
        for q in model.parameters():
            q.grad = q.main_grad.to(q.dtype)
        optim.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    if rank0:
        print(f"smoke: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps ({elapsed:.1f} s)", flush=True)
    destroy_parallel()
    if losses[-1] >= losses[0] * 0.5:
        if rank0:
            print("smoke: FAILED: the loss did not halve", flush=True)
        return 1
    if rank0:
        print("smoke: OK", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
