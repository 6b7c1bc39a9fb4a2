"""A Megatron ``torch_dist`` checkpoint save whose tensors are produced one at a time, after the files exist.

Megatron's own save (``TorchDistSaveShardedStrategy`` -> ``FileSystemWriterAsync``) resolves every
tensor of a rank before it writes the first byte, so a converter had to hold its whole shard in
memory, and then a staged copy of it. ``LazyTorchDistSaveStrategy`` keeps Megatron's translation
of the sharded state dict (MCore ``ShardedTensor`` -> PyTorch ``ShardedTensor``, ``MCoreSavePlanner``,
the same on-disk format that ``dist_checkpointing.load`` reads) and writes in two passes:

1. PyTorch's DCP save (planner, metadata, file names) with a ``FileSystemWriter`` that writes each
   tensor's file as a skeleton: its ``torch.save`` record with the bytes left as a hole
   (``torch.serialization.skip_data``; a fresh placeholder that is never touched stands in, so
   nothing is copied or allocated). Each tensor gets a file of its own (as
   ``single_file_per_rank=False`` lays them out: a few hundred ``__<rank>_<n>.distcp`` files for a
   7B model), without zip CRC32 records (the checksum would need the bytes; ``torch.load`` reads
   such files as it reads any other).
2. Right after, ``produce(placeholder, key, global offset)`` returns the tensor — or a
   ``StoredTensor`` saying where its bytes already are (e.g. an HF safetensors file), copied file
   to file by the kernel without being read into memory — and its bytes go into the hole.

Peak memory: about the largest tensor produced.

Used by the converters: HF -> Megatron (``produce`` reads the tensor's HF source on demand, or
points at its bytes) and Megatron -> Megatron resharding (``produce`` reads the chunk from the
source checkpoint, or points at it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _StorageInfo
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from srpo_mcore._compat.megatron_partial_load import _raw_offset
from srpo_mcore.checkpoint.stored import StoredTensor, write_at

Produce = Callable[[torch.Tensor, str, tuple[int, ...]], torch.Tensor | StoredTensor]
"""(placeholder, checkpoint key, global offset of the chunk) -> the tensor to write, or where its
bytes already are."""


class _ProducingWriter(FileSystemWriter):
    """DCP's file writer laying out one file per item (as ``single_file_per_rank=False`` does):
    the record's skeleton first, then the produced bytes into its hole."""

    def __init__(self, path: Path, produce: Produce, sync_files: bool) -> None:
        super().__init__(str(path), single_file_per_rank=False, sync_files=sync_files, thread_count=1)
        self._produce = produce

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = plan.storage_data.prefix
        results = []
        for n, item in enumerate(plan.items):
            name = f"{prefix}{n}{DEFAULT_SUFFIX}"
            path = Path(self.fs.concat_path(self.path, name))
            data = planner.resolve_data(item)
            with open(path, "wb") as f:
                if item.type == WriteItemType.BYTE_IO:
                    f.write(data.getbuffer())
                else:
                    with torch.serialization.skip_data():  # a hole where the bytes go
                        torch.save(torch.empty(data.shape, dtype=data.dtype), f)
            if item.type != WriteItemType.BYTE_IO:
                self._fill(path, data, item.index)
            length = path.stat().st_size
            results.append(
                WriteResult(index=item.index, size_in_bytes=length, storage_data=_StorageInfo(name, 0, length))
            )
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def _fill(self, path: Path, placeholder: torch.Tensor, index: Any) -> None:
        out = self._produce(placeholder, index.fqn, tuple(index.offset or ()))
        if tuple(out.shape) != tuple(placeholder.shape) or out.dtype != placeholder.dtype:
            raise ValueError(
                f"{index.fqn}: produced {tuple(out.shape)} {out.dtype}, "
                f"the checkpoint expects {tuple(placeholder.shape)} {placeholder.dtype}"
            )
        offset = _raw_offset(path)
        if offset is None:
            raise RuntimeError(f"{path}: torch.save did not write one uncompressed record")
        fd = os.open(path, os.O_WRONLY)
        try:
            if isinstance(out, StoredTensor):
                out.write_to(fd, offset)
            else:
                write_at(fd, out, offset)
            if self.sync_files:
                os.fsync(fd)
        finally:
            os.close(fd)


class LazyTorchDistSaveStrategy(TorchDistSaveShardedStrategy):
    """``dist_checkpointing.save(..., sharded_strategy=LazyTorchDistSaveStrategy(produce))``.

    Args:
        produce: Called with each placeholder tensor of the sharded state dict (a model parameter,
            never read), its key and global offset, in write order; returns the tensor to write
            (same shape, dtype) or a ``StoredTensor`` naming where its bytes are.
        sync_files: fsync every file written (slower; the converters rename the whole directory
            into place only when complete, so a crash leaves no checkpoint either way).
    """

    def __init__(self, produce: Produce, *, sync_files: bool = False) -> None:
        super().__init__("torch_dist", 1, thread_count=1)
        self._produce_fn = produce
        self._sync_files = sync_files

    def save(self, sharded_state_dict: Any, checkpoint_dir: Path) -> None:
        state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        planner = MCoreSavePlanner(
            dedup_replicated_tensors=not self.keep_only_main_replica,
            flatten_state_dict=False,
            flatten_sharded_tensors=False,
        )
        writer = _ProducingWriter(Path(checkpoint_dir), self._produce_fn, self._sync_files)
        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)  # no checksum of bytes that are not there yet
        try:
            dcp_save(mcore_to_pyt_state_dict(state, False), storage_writer=writer, planner=planner)
        finally:
            torch.serialization.set_crc32_options(crc)

    def async_save(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("LazyTorchDistSaveStrategy saves synchronously only")
