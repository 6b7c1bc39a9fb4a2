"""The offline tiny assets load through the ordinary transformers entry points and run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from srpo_mcore.tiny.checkpoints import TINY_CONFIGS
from srpo_mcore.tiny.tokenizer import SPECIAL_TOKENS, train_tiny_tokenizer


def test_tokenizer_roundtrip_specials_and_template() -> None:
    tok = train_tiny_tokenizer()
    text = "<think> 3 red circles + 4 = 7 </think><answer>\\boxed{7}</answer> Ünïcode 你好"
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS))), "specials are contiguous, in Qwen's order"
    for t in SPECIAL_TOKENS:  # each special is a single token, never split
        assert tok(t)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert train_tiny_tokenizer().get_vocab() == tok.get_vocab(), "training is deterministic"


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_checkpoint_loads_and_runs_with_images_and_video(name: str, tiny_checkpoint) -> None:
    path = tiny_checkpoint(name)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    cfg = json.loads((path / "config.json").read_text())
    _text_over, _vision_over, mrope, tied = TINY_CONFIGS[name]
    assert cfg["text_config"]["rope_parameters"]["mrope_section"] == mrope
    assert model.config.tie_word_embeddings is tied
    assert (model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()) is tied
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.text_config.vocab_size >= len(tok)

    rng = np.random.default_rng(0)
    img_a = Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8))
    img_b = Image.fromarray(rng.integers(0, 255, (112, 56, 3), dtype=np.uint8))
    video = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(4)]
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "video"}, {"type": "text", "text": "How many?"}],
        }
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(
        text=[prompt], images=[img_a, img_b], videos=[video], return_tensors="pt", return_mm_token_type_ids=True
    )
    assert "mm_token_type_ids" in inputs
    n_img = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert n_img == inputs["image_grid_thw"].prod(-1).sum().item() // 4, "one placeholder per 2x2-merged patch"
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    # The image changes the output: the vision tower is actually wired in.
    inputs2 = dict(inputs, pixel_values=inputs["pixel_values"] + 1.0)
    with torch.no_grad():
        out2 = model(**inputs2)
    assert not torch.allclose(out.logits, out2.logits)
