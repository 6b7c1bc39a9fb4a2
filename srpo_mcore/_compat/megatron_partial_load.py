"""Read part of a Megatron-Core ``torch_dist`` checkpoint into a model, on one rank, no collectives.

Megatron's ``dist_checkpointing.load`` is collective and translates each request into PyTorch
``ShardedTensor``s whose global metadata assumes the other fragments of a stacked (per-layer)
tensor live on other ranks: a request for one layer of a one-process job fails ("number of local
shards ... does not match"). The exporter wants exactly that — one layer at a time — so this
module reads the chunks itself with PyTorch's DCP machinery:

- ``megatron_chunks``: the (checkpoint key, global offset, destination view) of every tensor in a
  slice of the model's sharded state dict — Megatron's factories applied (the fused SwiGLU
  ``linear_fc1`` becomes its two halves, each a view of the parameter), stacked-layer axes
  prepended, exactly as Megatron's own save named and placed them.
- ``ChunkReader(dir).read(chunks)``: ``torch.distributed.checkpoint.load(no_dist=True)`` (the
  checkpoint's metadata read once per reader, not once per call) with a planner that asks
  for each chunk by key and offset (``create_read_items_for_chunk_list``, DCP's own resharding),
  reading into the destination views in place. Shapes are checked against the checkpoint.
  A stored tensor that is a whole file of its own (what ``megatron_lazy_save`` writes) is read
  straight into its destination: ``torch.load(mmap=True)`` gives its layout without touching its
  pages, and its bytes (one uncompressed zip record) are read with ``preadv``. DCP's reader loads
  it into a fresh tensor and copies that (two copies of the largest tensor resident; reads of a
  3.4 GB checkpoint took 7.2 s against 2.1 s). Files holding several tensors (Megatron's own
  saves, training checkpoints) take DCP's path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One tensor to read: ``key`` in the checkpoint, at ``offset`` in its global shape, into ``dest``."""

    key: str
    offset: tuple[int, ...]
    global_shape: tuple[int, ...]
    dest: torch.Tensor


def megatron_chunks(sharded_state_dict: Mapping[str, Any]) -> list[Chunk]:
    """The chunks of a (slice of a) model's ``sharded_state_dict()``; destinations alias the model."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    state = dict(sharded_state_dict)
    apply_factories(state)
    out = []
    for sh in nested_values(state):
        if not isinstance(sh, ShardedTensor):
            continue  # ShardedObjects (e.g. Transformer Engine extra state): not weights
        if sh.flattened_range is not None:
            raise NotImplementedError(f"{sh.key}: flattened (optimizer-style) chunks are not supported here")
        dest = sh.data.detach().view((1,) * sh.prepend_axis_num + tuple(sh.local_shape))  # aliases the parameter
        out.append(Chunk(sh.key, tuple(sh.global_offset), tuple(sh.global_shape), dest))
    return out


class _ChunkPlanner(DefaultLoadPlanner):
    def __init__(self, chunks: Sequence[Chunk]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.chunks = {f"chunk{i}": c for i, c in enumerate(chunks)}

    def create_local_plan(self) -> LoadPlan:
        items = []
        for name, c in self.chunks.items():
            md = self.metadata.state_dict_metadata.get(c.key) if self.metadata else None
            if not isinstance(md, TensorStorageMetadata):
                raise KeyError(f"checkpoint has no tensor {c.key!r}")
            if tuple(md.size) != c.global_shape:
                raise ValueError(f"{c.key}: checkpoint shape {tuple(md.size)} != model shape {c.global_shape}")
            wanted = ChunkStorageMetadata(offsets=torch.Size(c.offset), sizes=c.dest.size())
            for item in create_read_items_for_chunk_list(c.key, md, [wanted]):
                dest = dataclasses.replace(item.dest_index, fqn=name, offset=None, index=None)  # a plain tensor
                items.append(dataclasses.replace(item, dest_index=dest))
        self.plan = LoadPlan(items)
        return self.plan


def _raw_offset(path: Any) -> int | None:
    """Byte offset of the one storage record of a ``torch.save`` file (stored uncompressed), if any."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        data = [i for i in zf.infolist() if "/data/" in i.filename and not i.filename.endswith("/")]
        if len(data) != 1 or data[0].compress_type != zipfile.ZIP_STORED:
            return None
        info = data[0]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _raw_record(path: Any, stored: torch.Tensor, dtype: torch.dtype, nbytes: int) -> int | None:
    """Byte offset of `stored`'s data in `path` when the file holds exactly its `nbytes` of `dtype`, raw."""
    if not (
        stored.is_contiguous()
        and stored.storage_offset() == 0
        and stored.untyped_storage().nbytes() == stored.nbytes == nbytes
        and stored.dtype == dtype
    ):
        return None
    return _raw_offset(path)


def _whole_file(info: Any, path: Any) -> bool:
    """Whether DCP's storage item `info` is the whole of file `path`, untransformed (one tensor per file)."""
    return info.offset == 0 and not info.transform_descriptors and info.length == path.stat().st_size


def _read_whole(path: Any, stored: torch.Tensor, target: torch.Tensor) -> bool:
    """Read a stored tensor's bytes straight into `target` (no mapping kept); False if not possible."""
    import os

    offset = _raw_record(path, stored, target.dtype, target.nbytes) if target.is_contiguous() else None
    if offset is None:
        return False
    from srpo_mcore.checkpoint.hf_io import read_exact

    fd = os.open(path, os.O_RDONLY)
    try:
        if not read_exact(fd, memoryview(target.view(-1).view(torch.uint8).numpy()), offset):
            raise OSError(f"{path}: file ends inside its tensor")
    finally:
        os.close(fd)
    return True


class _MmapReader(FileSystemReader):
    """DCP's file reader, reading a single-tensor file straight into its destination; the
    checkpoint's metadata is read once and kept."""

    _metadata: Any = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Any:
        from pathlib import Path

        from torch.distributed._shard._utils import narrow_tensor_by_index

        rest = []
        for req in plan.items:
            info = self.storage_data[req.storage_index]
            path = Path(self.path) / info.relative_path
            if req.type != LoadItemType.TENSOR or not _whole_file(info, path):
                rest.append(req)
                continue
            stored = torch.load(path, mmap=True, weights_only=True, map_location="cpu")  # pages untouched
            target = planner.resolve_tensor(req).detach()
            complete = all(o == 0 for o in req.storage_offsets) and tuple(req.lengths) == tuple(stored.shape)
            if not (complete and _read_whole(path, stored, target)):
                target.copy_(narrow_tensor_by_index(stored, req.storage_offsets, req.lengths))
            planner.commit_tensor(req, target)
            del stored  # unmaps the file
        return super().read_data(dataclasses.replace(plan, items=rest), planner)


class ChunkReader:
    """Reads chunks of one checkpoint, call after call (this rank only; no process group needed)."""

    def __init__(self, checkpoint_dir: str) -> None:
        self._dir = checkpoint_dir
        self._reader = _MmapReader(checkpoint_dir)

    def stored_bytes(self, chunk: Chunk) -> tuple[str, int] | None:
        """(file, byte offset) where the checkpoint keeps exactly `chunk`'s bytes, raw and in
        order, when it stores that tensor as a file of its own (else None: read it instead)."""
        from pathlib import Path

        from torch.distributed.checkpoint.metadata import MetadataIndex

        metadata = self._reader.read_metadata()
        md = metadata.state_dict_metadata.get(chunk.key)
        if not isinstance(md, TensorStorageMetadata) or tuple(md.size) != chunk.global_shape:
            return None
        if not any(tuple(c.offsets) == chunk.offset and tuple(c.sizes) == tuple(chunk.dest.shape) for c in md.chunks):
            return None  # stored in other pieces than the one asked for
        info = metadata.storage_data.get(MetadataIndex(chunk.key, torch.Size(chunk.offset)))
        path = Path(self._dir) / info.relative_path if info is not None else None
        if path is None or not _whole_file(info, path):
            return None
        stored = torch.load(path, mmap=True, weights_only=True, map_location="cpu")  # pages untouched
        if not isinstance(stored, torch.Tensor):
            return None
        offset = _raw_record(path, stored, chunk.dest.dtype, chunk.dest.nbytes)
        del stored
        return None if offset is None else (str(path), offset)

    def read(self, chunks: Sequence[Chunk]) -> None:
        """Fill every chunk's ``dest`` from the checkpoint."""
        if not chunks:
            return
        planner = _ChunkPlanner(chunks)
        state = {name: c.dest for name, c in planner.chunks.items()}
        with torch.no_grad():
            dcp_load(state, storage_reader=self._reader, planner=planner, no_dist=True)
