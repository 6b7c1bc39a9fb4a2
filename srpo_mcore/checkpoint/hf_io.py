"""Reading HF safetensors checkpoints tensor by tensor (memory-mapped, sharded or not).

Owns: ``HFCheckpoint`` — the index of a checkpoint directory (``model.safetensors`` or
``model.safetensors.index.json`` + shards) and lazy access to one tensor at a time, with errors
that name the file and tensor at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


class HFCheckpoint:
    """Lazy, memory-mapped view of the tensors of an HF checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e})") from e
            self._where = {name: self.path / f for name, f in weight_map.items()}
        elif single.exists():
            self._where = {}
            with self._open(single) as f:
                self._where = dict.fromkeys(f.keys(), single)
        else:
            raise FileNotFoundError(f"{self.path}: no model.safetensors or model.safetensors.index.json")
        self._handles: dict[Path, object] = {}

    @staticmethod
    def _open(file: Path):  # type: ignore[no-untyped-def]
        try:
            return safe_open(str(file), framework="pt")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"{file}: cannot read safetensors file ({e})") from e

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read on demand."""
        if name not in self._where:
            raise KeyError(f"{self.path}: checkpoint has no tensor {name!r}")
        file = self._where[name]
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = self._open(file).__enter__()
        try:
            return handle.get_tensor(name)  # type: ignore[attr-defined]
        except Exception as e:
            raise ValueError(f"{file}: cannot read tensor {name!r} ({e})") from e
