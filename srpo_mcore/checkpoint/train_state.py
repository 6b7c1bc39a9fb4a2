"""Training checkpoints: save and resume a run with Megatron-Core dist-checkpointing, atomically.

Owns the layout of ``<run_dir>/checkpoints/``::

    step_000010/            one complete checkpoint
        (torch_dist files)  model + optimizer state, sharded by Megatron (the model at any TP/PP/DP on
                            load; the optimizer too in the fully_reshardable format, DP only in dp_reshardable)
        trainer_state.json  step, data position, lr schedule, ... (plain JSON), and the layout and
                            optimizer format it was saved with
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

Resuming at another layout: the model always reshards; the optimizer state reshards at another TP /
PP / CP only in the ``fully_reshardable`` format (Megatron gathers each model-parallel shard's
optimizer state on its first data-parallel rank while saving); a ``dp_reshardable`` checkpoint
(each rank's flat buffer shard) is refused at another TP / PP / CP with a message that says how to
continue. Per-rank torch RNG streams are restored only at the saved layout: a rank of another layout
has no stream of its own to continue, so it keeps the seeded state (``load`` returns what it could not
carry over, for the log).

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
OPTIMIZER_FORMATS = ("fully_reshardable", "dp_reshardable")
MODEL_PARALLEL_DIMS = ("tp", "pp", "cp")


class CheckpointLayoutError(RuntimeError):
    """The checkpoint cannot be resumed at this layout."""


def resume_problem(saved: dict[str, Any], layout: dict[str, int]) -> str | None:
    """Why the checkpoint state `saved` (its ``trainer_state.json``) cannot resume at `layout`, or None."""
    fmt = saved.get("optimizer_format", "dp_reshardable")  # checkpoints before the field: dp_reshardable
    was = saved.get("layout")
    if fmt == "fully_reshardable" or was is None:
        return None
    changed = [
        f"{k} {was.get(k, 1)} -> {layout.get(k, 1)}" for k in MODEL_PARALLEL_DIMS if was.get(k, 1) != layout.get(k, 1)
    ]
    if not changed:
        return None
    return (
        f"its optimizer state is dp_reshardable (checkpoint.optimizer_format), which resumes at another data-parallel "
        f"size only, and this run changes {', '.join(changed)}. Resume at the saved layout "
        f"(parallel.tp={was.get('tp', 1)} parallel.pp={was.get('pp', 1)} parallel.cp={was.get('cp', 1)}) and save "
        "with checkpoint.optimizer_format=fully_reshardable, or start a new run from its weights "
        "(tools/convert_mcore_to_hf.py --mcore-dir <checkpoint>; the optimizer state starts fresh)"
    )


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

    def __init__(
        self,
        root: str | Path,
        keep_last: int = 2,
        *,
        optimizer_format: str = "fully_reshardable",
        layout: dict[str, int] | None = None,
    ) -> None:
        """
        Args:
            optimizer_format: ``fully_reshardable`` or ``dp_reshardable`` (``checkpoint.optimizer_format``).
            layout: This run's ``{"tp", "pp", "cp", "dp"}``; recorded on save, checked on load.
        """
        if optimizer_format not in OPTIMIZER_FORMATS:
            raise ValueError(f"optimizer_format must be one of {OPTIMIZER_FORMATS}, got {optimizer_format!r}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.optimizer_format = optimizer_format
        self.layout = dict(layout or {"tp": 1, "pp": 1, "cp": 1, "dp": 1})
        self.not_carried: list[str] = []
        """After ``load``: the state that could not be carried over exactly (for the log)."""

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
        from srpo_mcore._compat.megatron_optim_cpu import prime_adam_state, quiet_gathered_param_state

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
            "optimizer": optimizer.sharded_state_dict(
                model_sd, is_loading=False, metadata=self._metadata(self.optimizer_format)
            ),
        }
        with quiet_gathered_param_state():
            dist_checkpointing.save(sharded, str(tmp))
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng" / f"rank_{_rank():05d}.pt")
        _barrier()
        if _rank() == 0:
            if describe is not None:
                describe(tmp)
            record = {"optimizer_format": self.optimizer_format, "layout": self.layout}
            _write_json(tmp / "trainer_state.json", {**state, **record, "step": step})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            _write_text(self.root / LATEST, final.name)
            self._prune()
        _barrier()
        return final

    @staticmethod
    def _metadata(fmt: str) -> dict[str, Any]:
        # fully_reshardable gathers each buffer's DP shards: with NCCL on GPU (Megatron's default, every DP
        # rank holds the gathered state in host memory), with gloo onto DP rank 0 only on CPU (no CUDA).
        return {
            "distrib_optim_sharding_type": fmt,
            "distrib_optim_fully_reshardable_mem_efficient": not torch.cuda.is_available(),
        }

    def load(self, path: str | Path, model: Any, optimizer: Any) -> dict[str, Any]:
        """Restore model, optimizer and (at the saved layout) this rank's RNG from `path`; return the
        trainer state. ``self.not_carried`` lists what could not be carried over exactly.

        Raises:
            CheckpointLayoutError: A dp_reshardable checkpoint at another TP / PP / CP.
        """
        from megatron.core import dist_checkpointing

        from srpo_mcore._compat.megatron_optim_cpu import prime_adam_state, restore_adam_steps

        path = Path(path)
        state = json.loads((path / "trainer_state.json").read_text())
        problem = resume_problem(state, self.layout)
        if problem:
            raise CheckpointLayoutError(f"cannot resume from {path}: {problem}")
        saved_format = state.get("optimizer_format", "dp_reshardable")
        same_layout = state.get("layout", self.layout) == self.layout
        prime_adam_state(optimizer)
        model_sd = model.sharded_state_dict()
        sharded = {
            "model": model_sd,
            "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=self._metadata(saved_format)),
        }
        loaded = dist_checkpointing.load(sharded, str(path))
        with torch.no_grad():  # fp32 main params are the (grad-requiring) model parameters themselves
            model.load_state_dict(loaded["model"], strict=True)
            optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_steps(optimizer)
        rng = path / "rng" / f"rank_{_rank():05d}.pt"
        self.not_carried = []
        if same_layout and rng.exists():
            torch.set_rng_state(torch.load(rng)["torch"])
        else:
            was = state.get("layout", {})
            self.not_carried.append(
                "per-rank torch RNG streams (saved at "
                + " ".join(f"{k}={was.get(k, '?')}" for k in ("tp", "pp", "cp", "dp"))
                + "; every rank keeps its seeded stream)"
            )
        return state

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
