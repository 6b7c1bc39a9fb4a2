"""Reading HF safetensors checkpoints tensor by tensor (sharded or not).

Owns: ``HFCheckpoint`` — the index of a checkpoint directory (``model.safetensors`` or
``model.safetensors.index.json`` + shards) and access to one tensor at a time, with errors that
name the file and tensor at fault. Each file is validated by ``safetensors`` when first opened;
tensors are then read with one positioned read each into a fresh buffer instead of through a
memory map, so the pages of tensors already consumed do not stay in this process's resident set
(a memory-mapped read keeps every page it touched mapped: a converter's RSS grew by the whole
checkpoint). An optional ``rename`` maps the names stored in the files to the names callers use
(e.g. transformers' internal Qwen2.5-VL layout to the hub's), so one checkpoint may be saved in
either layout.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

# safetensors dtype names -> torch dtypes
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_exact(fd: int, view: memoryview, offset: int) -> bool:
    """Fill `view` from `fd` at `offset` (pread returns short counts); False if the file ends first."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            return False
        got += n
    return True


class _File:
    """One safetensors file: its header, and positioned reads of its tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        try:
            with safe_open(str(path), framework="pt") as f:  # full validation (offsets, sizes, dtypes)
                self.keys = list(f.keys())
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"{path}: cannot read safetensors file ({e})") from e
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.header = json.loads(f.read(n))
        self.data_start = 8 + n

    def read(self, name: str) -> torch.Tensor:
        entry = self.header[name]
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        buf = torch.empty(end - begin, dtype=torch.uint8)
        if not read_exact(self.fd, memoryview(buf.numpy()), self.data_start + begin):
            raise ValueError(f"{self.path}: tensor {name!r} is cut short (file truncated while reading)")
        return buf.view(dtype).reshape(entry["shape"])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


class HFCheckpoint:
    """Lazy view of the tensors of an HF checkpoint directory (one tensor read at a time).

    Args:
        path: The checkpoint directory.
        rename: Maps a stored tensor name to the name it is known by here (default: itself).
            Two stored tensors that rename to one name are refused, naming both.
    """

    def __init__(self, path: str | Path, rename: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        self._files: dict[Path, _File] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e})") from e
            self._where = {name: self.path / f for name, f in weight_map.items()}
        elif single.exists():
            self._where = dict.fromkeys(self._file(single).keys, single)
        else:
            raise FileNotFoundError(f"{self.path}: no model.safetensors or model.safetensors.index.json")
        self._stored: dict[str, str] = {}
        """Name used here -> name in the file."""
        where: dict[str, Path] = {}
        for stored, file in self._where.items():
            name = rename(stored) if rename else stored
            if name in self._stored:
                raise ValueError(
                    f"{self.path}: tensors {self._stored[name]!r} and {stored!r} are both {name!r} "
                    "(the checkpoint mixes two tensor layouts)"
                )
            self._stored[name] = stored
            where[name] = file
        self._where = where
        self.renamed = sum(k != v for k, v in self._stored.items())
        """How many tensors are known here by another name than the stored one."""

    def _file(self, path: Path) -> _File:
        if path not in self._files:
            self._files[path] = _File(path)
        return self._files[path]

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read on demand into memory of its own."""
        if name not in self._where:
            raise KeyError(f"{self.path}: checkpoint has no tensor {name!r}")
        file, stored = self._file(self._where[name]), self._stored[name]
        if stored not in file.header:
            raise ValueError(f"{file.path}: cannot read tensor {stored!r} (the index names it, the file lacks it)")
        try:
            return file.read(stored)
        except OSError as e:
            raise ValueError(f"{file.path}: cannot read tensor {stored!r} ({e})") from e

    def location(self, name: str) -> tuple[str, int, int, torch.dtype]:
        """(file, byte offset, bytes, dtype) of tensor `name`'s raw data, without reading it."""
        if name not in self._where:
            raise KeyError(f"{self.path}: checkpoint has no tensor {name!r}")
        file, stored = self._file(self._where[name]), self._stored[name]
        entry = file.header.get(stored)
        if entry is None or entry["dtype"] not in DTYPES:
            raise ValueError(f"{file.path}: cannot locate tensor {stored!r}")
        begin, end = entry["data_offsets"]
        return str(file.path), file.data_start + begin, end - begin, DTYPES[entry["dtype"]]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
