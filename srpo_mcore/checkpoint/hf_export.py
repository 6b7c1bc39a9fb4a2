"""Writing HF checkpoints: sharded safetensors + index, config, tokenizer and processor files.

Owns: ``write_hf_checkpoint`` — consumes a stream of (HF name, tensor) pairs, writes shards of
bounded size, writes the index and ``config.json``, copies the tokenizer, processor, chat
template and generation config from a source checkpoint, all through ``atomic_dir`` (an
interrupted export leaves no checkpoint-looking directory) — and ``ShardWriter``, which writes a
safetensors file a tensor at a time: each tensor's bytes go to disk as it arrives, and the header
(whose length the format puts first) is written last into space reserved at the start and padded
with spaces, as the safetensors format allows. An export holds one tensor, not one shard.
A ``StoredTensor`` (bytes already on disk, e.g. a Megatron checkpoint's tensor file) is copied
file to file (``checkpoint.stored``) and never read into memory.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from srpo_mcore.atomic_dir import atomic_dir
from srpo_mcore.checkpoint.hf_io import DTYPES
from srpo_mcore.checkpoint.stored import StoredTensor, nbytes
from srpo_mcore.models.qwen2_5_vl.config import Qwen25VLArch

SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)


SAFETENSORS_DTYPES = {dtype: name for name, dtype in DTYPES.items()}
HEADER_RESERVE = 1 << 16
"""Bytes reserved for a shard's header (~150 bytes a tensor: ~400 tensors; a longer header costs a
rewrite of the shard)."""


class ShardWriter:
    """One safetensors file, written a tensor at a time (see the module docstring)."""

    def __init__(self, path: Path, reserve: int = HEADER_RESERVE) -> None:
        self.path = path
        self.reserve = reserve
        self.entries: dict[str, dict] = {}
        self.size = 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.file.write(b"\0" * (8 + reserve))

    def add(self, name: str, tensor: torch.Tensor | StoredTensor) -> None:
        if name in self.entries:
            raise ValueError(f"{self.path}: tensor {name!r} written twice")
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        if isinstance(tensor, StoredTensor):
            self.file.flush()
            at = 8 + self.reserve + self.size
            tensor.write_to(self.file.fileno(), at)
            self.file.seek(at + tensor.nbytes)
            end = self.size + tensor.nbytes
        else:
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            self.file.write(memoryview(data.numpy()))
            end = self.size + data.numel()
        self.entries[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.size, end],
        }
        self.size = end

    def finish(self) -> None:
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.entries}, separators=(",", ":")).encode()
        if len(header) <= self.reserve:
            self.file.seek(0)
            self.file.write(struct.pack("<Q", self.reserve) + header + b" " * (self.reserve - len(header)))
            self.file.close()
            return
        # More tensors than the reserved space describes: write the file again behind a longer header.
        self.file.close()
        padded = header + b" " * (-len(header) % 8)  # keep the data 8-byte aligned
        moved = self.path.with_name(self.path.name + ".data")
        self.path.rename(moved)
        with open(moved, "rb") as src, open(self.path, "wb") as dst:
            dst.write(struct.pack("<Q", len(padded)) + padded)
            src.seek(8 + self.reserve)
            shutil.copyfileobj(src, dst, 64 * 2**20)
        moved.unlink()


def write_hf_checkpoint(
    weights: Iterable[tuple[str, torch.Tensor | StoredTensor]],
    arch: Qwen25VLArch,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    max_shard_bytes: int = 5 * 2**30,
    force: bool = False,
    quantization: tuple[dict, dict] | None = None,
) -> Path:
    """Write an HF Qwen2.5-VL checkpoint to `out_dir` and return it.

    `quantization`: (``quantization_config`` of ``config.json``, ``hf_quant_config.json``) of
    quantised weights in the stream (``checkpoint.fp8.quantization_metadata``).

    Raises:
        FileExistsError: `out_dir` already holds a checkpoint and `force` is False.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: already exists and is not empty (pass force=True / --force to replace it)")
    with atomic_dir(out) as tmp:
        files: list[str] = []
        weight_map: dict[str, str] = {}
        shard: ShardWriter | None = None
        total = 0
        for name, tensor in weights:
            size = nbytes(tensor)
            if shard is not None and shard.size and shard.size + size > max_shard_bytes:
                shard.finish()
                shard = None
            if shard is None:
                files.append(f"model-{len(files) + 1:05d}.safetensors")
                shard = ShardWriter(tmp / files[-1])
            shard.add(name, tensor)
            weight_map[name] = files[-1]
            total += size
            del tensor  # written: a streaming source may free it before producing the next
        if shard is not None:
            shard.finish()
        n = len(files)
        renamed = {}
        for i, f in enumerate(files):  # the HF convention names shards model-0000i-of-0000n
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (tmp / f).rename(tmp / final)
            renamed[f] = final
        if n > 1:
            index = {
                "metadata": {"total_size": total},
                "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())},
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        source_config = Path(source_dir) / "config.json" if source_dir is not None else None
        if source_config is not None and source_config.exists() and Qwen25VLArch.from_hf(source_config) == arch:
            shutil.copy2(source_config, tmp / "config.json")  # keeps every field of the original
        else:
            arch.to_hf().to_json_file(str(tmp / "config.json"))
        if quantization is not None:
            config = json.loads((tmp / "config.json").read_text())
            config["quantization_config"] = quantization[0]
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "hf_quant_config.json").write_text(json.dumps(quantization[1], indent=4) + "\n")
        if source_dir is not None:
            for side in SIDE_FILES:
                src = Path(source_dir) / side
                if src.exists():
                    shutil.copy2(src, tmp / side)
    return out
