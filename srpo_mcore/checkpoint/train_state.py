"""Training checkpoints: save and resume a run with Megatron-Core dist-checkpointing, atomically.

Owns the layout of ``<run_dir>/checkpoints/``::

    step_000010/            one complete checkpoint
        (torch_dist files)  model + optimizer state, sharded by Megatron (any TP/PP/DP on load)
        trainer_state.json  step, data position, lr schedule, wandb id, ... (plain JSON)
        rng/rank_00000.pt   every rank's torch RNG state
    srpo_mcore.json, config.json, tokenizer files   (from the trainer) so the converters read it:
                        tools/convert_mcore_to_hf.py --mcore-dir .../step_000010 --out hf_step10
    latest                  text file naming the newest complete checkpoint

A checkpoint is written into a hidden temporary sibling (name chosen on rank 0 and broadcast),
renamed into place only after every rank finished writing, and only then is ``latest`` replaced
(``os.replace`` of a temp file). A run killed at any moment therefore leaves either the previous
``latest`` or the new one — never a half-written checkpoint that looks finished. Older checkpoints
beyond ``keep_last`` are deleted after the new one is complete; leftover temporary directories of
killed runs are removed on the next save.

Does not own: what the trainer state contains (the trainer passes a dict) or HF export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LATEST = "latest"
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
"""Distributed-optimizer state is saved per buffer: fully parallel, no gathering; a resume may change
the data-parallel size but not TP/PP (convert the model alone with the converters for that)."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast_str(value: str | None) -> str:
    box = [value]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]


class TrainCheckpointer:
    """Save/load training checkpoints under ``root`` (collective: call on every rank)."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None. Raises if ``latest`` names a missing directory."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
        return path

    def save(
        self,
        step: int,
        model: Any,
        optimizer: Any,
        state: dict[str, Any],
        describe: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write checkpoint ``step_{step:06d}`` and point ``latest`` at it; returns its path.

        Args:
            describe: Called on rank 0 with the (temporary) checkpoint directory before it is renamed
                into place, to add files of the caller's (e.g. converter metadata).
        """
        from megatron.core import dist_checkpointing

        from srpo_mcore._compat.megatron_ckpt_queue import use_in_process_write_queue
        from srpo_mcore._compat.megatron_optim_cpu import prime_adam_state

        use_in_process_write_queue()
        final = self.root / f"step_{step:06d}"
        tmp_name = None
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".step_*.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp_name = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=self.root)
        tmp = Path(_broadcast_str(tmp_name))
        prime_adam_state(optimizer)  # a save before the first update must work too
        model_sd = model.sharded_state_dict()
        sharded = {
            "model": model_sd,
            "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=OPTIMIZER_METADATA),
        }
        dist_checkpointing.save(sharded, str(tmp))
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng" / f"rank_{_rank():05d}.pt")
        _barrier()
        if _rank() == 0:
            if describe is not None:
                describe(tmp)
            _write_json(tmp / "trainer_state.json", {**state, "step": step})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            _write_text(self.root / LATEST, final.name)
            self._prune()
        _barrier()
        return final

    def load(self, path: str | Path, model: Any, optimizer: Any) -> dict[str, Any]:
        """Restore model, optimizer and this rank's RNG from `path`; return the trainer state."""
        from megatron.core import dist_checkpointing

        from srpo_mcore._compat.megatron_optim_cpu import prime_adam_state, restore_adam_steps

        path = Path(path)
        prime_adam_state(optimizer)
        model_sd = model.sharded_state_dict()
        sharded = {
            "model": model_sd,
            "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=OPTIMIZER_METADATA),
        }
        loaded = dist_checkpointing.load(sharded, str(path))
        with torch.no_grad():  # fp32 main params are the (grad-requiring) model parameters themselves
            model.load_state_dict(loaded["model"], strict=True)
            optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_steps(optimizer)
        rng = path / "rng" / f"rank_{_rank():05d}.pt"
        if rng.exists():  # absent when resuming at a different world size
            torch.set_rng_state(torch.load(rng)["torch"])
        return json.loads((path / "trainer_state.json").read_text())

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step_*") if (p / "trainer_state.json").exists())
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=True))
