"""Tiny random Qwen2.5-VL checkpoints in Hugging Face format, built offline and cached.

Owns: a few tiny configurations that differ in every way the Megatron model and the converters
must respect (GQA vs MHA, tied vs untied embeddings, mrope sections, vision window size and
full-attention layers, layer counts), and ``build_tiny_checkpoint`` which saves one with
``save_pretrained`` next to the tiny tokenizer/processor — atomically, into a cache directory.

Does not own: real model weights (none can be downloaded here) or the Megatron side.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from srpo_mcore.tiny.tokenizer import train_tiny_tokenizer

# head_dim 32 or 64 everywhere: vLLM's CPU attention kernels support no smaller head size.
TEXT_BASE: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    hidden_act="silu",
)
VISION_BASE: dict[str, Any] = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=56,
    fullatt_block_indexes=[1],
)

# name -> (text overrides, vision overrides, mrope_section, tie_word_embeddings)
TINY_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any], list[int], bool]] = {
    # GQA (4 heads of 32, 2 groups), untied, 2x2-merged windows of 56 px, last vision layer full attention.
    "gqa": ({}, {}, [4, 6, 6], False),
    # MHA, tied embeddings, different mrope split, full attention on the first vision layer.
    "tied": ({"num_key_value_heads": 4}, {"window_size": 112, "fullatt_block_indexes": [0]}, [8, 4, 4], True),
    # 4 layers (pipeline-splittable), 2 heads of 64 in 1 KV group, deeper vision tower.
    "deep": (
        {"num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1},
        {"depth": 3, "num_heads": 2, "fullatt_block_indexes": [0, 2]},
        [16, 8, 8],
        False,
    ),
    # The laptop demo's policy (python -m srpo_mcore.demo): wide and deep enough to learn the five-block
    # format and some of the synthetic task in minutes on 2 cores; 4 heads of 64 in 2 KV groups.
    "demo": (
        {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4},
        {},
        [8, 12, 12],
        False,
    ),
}

# Images are resized so that each side is a multiple of patch*merge = 28 px within these bounds.
MIN_PIXELS = 28 * 28
MAX_PIXELS = 28 * 28 * 64


def tiny_processor() -> Qwen2_5_VLProcessor:
    """The tiny tokenizer with Qwen2.5-VL's image/video processors (small pixel budget)."""
    tok = train_tiny_tokenizer()
    image = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2)
    video = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image, tokenizer=tok, video_processor=video, chat_template=tok.chat_template
    )


def tiny_config(name: str, vocab_size: int, token_ids: dict[str, int]) -> Qwen2_5_VLConfig:
    """The HF config of tiny model `name` for a tokenizer with these ids."""
    if name not in TINY_CONFIGS:
        raise KeyError(f"unknown tiny config {name!r}; known: {', '.join(TINY_CONFIGS)}")
    text_over, vision_over, mrope, tied = TINY_CONFIGS[name]
    text = {**TEXT_BASE, **text_over}
    text.update(
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
        tie_word_embeddings=tied,
    )
    vision = {**VISION_BASE, **vision_over, "out_hidden_size": text["hidden_size"]}
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=tied,
    )


def _cache_key(name: str, seed: int) -> str:
    """Changes whenever this file, the tokenizer builder or the library versions change."""
    import transformers

    from srpo_mcore.tiny import tokenizer

    h = hashlib.sha256()
    for src in (inspect.getsource(tokenizer), Path(__file__).read_text(), transformers.__version__, torch.__version__):
        h.update(src.encode())
    return f"{name}-s{seed}-{h.hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """``$SRPO_TINY_CACHE`` or ``<tmp>/srpo_mcore_tiny``."""
    return Path(os.environ.get("SRPO_TINY_CACHE", Path(tempfile.gettempdir()) / "srpo_mcore_tiny"))


def build_tiny_checkpoint(name: str = "gqa", cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Build (or reuse) tiny checkpoint `name`; return its HF directory.

    The directory holds ``config.json``, ``model.safetensors``, the tokenizer, the processor and
    the chat template, as ``save_pretrained`` writes them. It is written to a temporary sibling and
    renamed into place, so a crash never leaves a half-written checkpoint in the cache.
    """
    root = cache_dir or default_cache_dir()
    out = root / _cache_key(name, seed)
    if (out / "config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
    try:
        processor = tiny_processor()
        tok = processor.tokenizer
        ids = {
            t: tok.convert_tokens_to_ids(t)
            for t in (
                "<|endoftext|>",
                "<|im_end|>",
                "<|image_pad|>",
                "<|video_pad|>",
                "<|vision_start|>",
                "<|vision_end|>",
            )
        }
        vocab = -(-len(tok) // 64) * 64  # pad like the real checkpoints (152064 > 151665 tokens)
        config = tiny_config(name, vocab, ids)
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        with torch.no_grad():  # HF initialises norms to ones; random norms make parity tests meaningful
            for pname, p in model.named_parameters():
                if "norm" in pname or pname.endswith(".bias"):
                    p.normal_(1.0 if "norm" in pname else 0.0, 0.1)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "srpo_tiny.json").write_text(json.dumps({"name": name, "seed": seed}))
        try:
            tmp.rename(out)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m srpo_mcore.tiny.checkpoints [NAME]``: build (or reuse) a tiny checkpoint, print its directory."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m srpo_mcore.tiny.checkpoints", description=main.__doc__)
    parser.add_argument(
        "name", nargs="?", default="gqa", choices=sorted(TINY_CONFIGS), help="tiny config (default gqa)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    print(build_tiny_checkpoint(args.name, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
