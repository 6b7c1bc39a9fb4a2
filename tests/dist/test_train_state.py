"""A training checkpoint written before the first optimizer update (a GRPO run whose first steps had
no group past the accuracy filter, a SIGTERM during the first step) saves, loads, and the update after
loading equals the update of an optimizer that was never saved (bitwise). Megatron's distributed
optimizer without TE/Apex asserted on the missing Adam ``step`` (``assert len(steps) == 1``)."""

from __future__ import annotations

from pathlib import Path

import torch
from dist_harness import run_distributed

NAME = "gqa"


def _worker(ckpt_dir: str, save_first: bool) -> dict:
    from megatron.core import tensor_parallel

    from srpo_mcore.checkpoint.load_hf import load_hf_weights
    from srpo_mcore.checkpoint.train_state import TrainCheckpointer
    from srpo_mcore.config import OptimConfig
    from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch
    from srpo_mcore.models.qwen2_5_vl.model import ModelLayout, Qwen25VLModel
    from srpo_mcore.parallel.dims import ParallelDims
    from srpo_mcore.parallel.setup import destroy_parallel, init_parallel
    from srpo_mcore.rl.batch import TrainSequence, collate
    from srpo_mcore.rl.optim import build_optimizer, prepare_for_training
    from srpo_mcore.sft_trainer import sft_step
    from srpo_mcore.tiny.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(NAME)
    init_parallel(ParallelDims())
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = Qwen25VLModel(Qwen25VLArch.from_hf(path), ModelLayout())
    load_hf_weights(model, path)
    ocfg = OptimConfig(lr=1e-3, distributed_optimizer=True)
    ddp = prepare_for_training(model, ocfg)
    optimizer, _ = build_optimizer(ddp, ocfg, dtype="fp32", total_steps=2)
    if save_first:
        ckpt = TrainCheckpointer(Path(ckpt_dir))
        saved = ckpt.save(0, model, optimizer, {"note": "before any update"})
        ckpt.load(saved, model, optimizer)
    seq = TrainSequence(tuple(range(5, 17)), tuple(range(20, 29)), 1.0, (0.0,) * 9, None, 0, None)
    mb = collate([seq], [0], pad_id=0, aggregation="token_mean")
    metrics = sft_step([ddp], optimizer, [mb])
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    destroy_parallel()
    return {"loss": metrics["loss"], "weights": weights}


def test_checkpoint_before_first_update(tiny_checkpoint, tmp_path: Path) -> None:
    tiny_checkpoint(NAME)
    plain = run_distributed(_worker, 1, str(tmp_path / "unused"), False)[0]
    saved = run_distributed(_worker, 1, str(tmp_path / "ckpt"), True)[0]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_000000"
    assert saved["loss"] == plain["loss"]
    changed = [k for k in plain["weights"] if not torch.equal(plain["weights"][k], saved["weights"][k])]
    assert not changed, changed[:5]
