"""Shared inputs for the Qwen2.5-VL parity tests: processor batches built from the tiny assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def build_cases(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Processor outputs for: text only, one image, two images of different sizes, one video and a
    padded batch of two samples (one with an image)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    rng = np.random.default_rng(0)

    def chat(content: list[dict]) -> str:
        return proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    q = {"type": "text", "text": "How many red circles are there? Think, then answer."}
    cases = {
        "text": proc(text=[chat([q])], return_tensors="pt"),
        "one_image": proc(text=[chat([{"type": "image"}, q])], images=[_image(rng, 84, 56)], return_tensors="pt"),
        "two_images": proc(
            text=[chat([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}, q])],
            images=[_image(rng, 56, 112), _image(rng, 140, 84)],
            return_tensors="pt",
        ),
        "video": proc(
            text=[chat([{"type": "video"}, q])],
            videos=[[rng.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(4)]],
            return_tensors="pt",
        ),
        "padded_batch": proc(
            text=[chat([{"type": "image"}, q]), chat([{"type": "text", "text": "Hi."}])],
            images=[_image(rng, 56, 56)],
            padding=True,
            return_tensors="pt",
        ),
    }
    return {k: dict(v) for k, v in cases.items()}


