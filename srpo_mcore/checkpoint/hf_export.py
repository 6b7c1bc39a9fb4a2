"""Writing HF checkpoints: sharded safetensors + index, config, tokenizer and processor files.

Owns: ``write_hf_checkpoint`` — consumes a stream of (HF name, tensor) pairs, writes shards of
bounded size as they fill, writes the index and ``config.json``, copies the tokenizer, processor,
chat template and generation config from a source checkpoint, all through ``atomic_dir`` (an
interrupted export leaves no checkpoint-looking directory).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from srpo_mcore.atomic_dir import atomic_dir
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


def write_hf_checkpoint(
    weights: Iterable[tuple[str, torch.Tensor]],
    arch: Qwen25VLArch,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    max_shard_bytes: int = 5 * 2**30,
    force: bool = False,
) -> Path:
    """Write an HF Qwen2.5-VL checkpoint to `out_dir` and return it.

    Raises:
        FileExistsError: `out_dir` already holds a checkpoint and `force` is False.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: already exists and is not empty (pass force=True / --force to replace it)")
    with atomic_dir(out) as tmp:
        current: dict[str, torch.Tensor] = {}
        files: list[str] = []
        weight_map: dict[str, str] = {}
        size = 0
        total = 0

        def flush() -> None:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file({k: v.contiguous() for k, v in current.items()}, str(tmp / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update(dict.fromkeys(current, name))
            current.clear()

        for name, tensor in weights:
            nbytes = tensor.numel() * tensor.element_size()
            if current and size + nbytes > max_shard_bytes:
                flush()
                size = 0
            current[name] = tensor.detach().cpu()
            size += nbytes
            total += nbytes
        if current:
            flush()
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
        if source_dir is not None:
            for side in SIDE_FILES:
                src = Path(source_dir) / side
                if src.exists():
                    shutil.copy2(src, tmp / side)
    return out
