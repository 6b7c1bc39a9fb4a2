"""The system prompts that tell the policy which output format to produce.

Owns: the SRPO prompt (the five-block answer → reflection → answer format of shared/SRPO.md, with
a one-line worked example) and the plain single-attempt prompt of the GRPO baseline, and the
lookup by the ``data.prompt`` config value.

Does not own: checking that a response follows the format (``srpo_mcore.rl.rewards.format``) or
chat templating (``srpo_mcore.data.rl_dataset.chat_prompt``).
"""

from __future__ import annotations

SRPO_EXAMPLE = (
    "<think> 1 + 1 adds one to one, which gives 2. </think>"
    "<answer> \\boxed{2} </answer>"
    "<reflection> The addition is right and the reasoning is direct; nothing is missing, "
    "so the answer stays. </reflection>"
    "<think> Checking again: one plus one is two. </think>"
    "<answer> \\boxed{2} </answer>"
)
"""The worked example closing ``SRPO_SYSTEM_PROMPT`` (a response in the exact SRPO format)."""

PLAIN_EXAMPLE = "<think> 1 + 1 adds one to one, which gives 2. </think><answer> \\boxed{2} </answer>"
"""The worked example closing ``PLAIN_SYSTEM_PROMPT`` (one think + answer)."""

SRPO_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves visual reasoning problems step by step. "
    "Respond in exactly five blocks, in this order and with nothing after the last one: "
    "first reason inside <think> </think> and give your answer inside <answer> </answer>; "
    "then critique that first attempt inside <reflection> </reflection> (check the logic, "
    "missing assumptions and the result, and say how to improve it); "
    "then reason again inside <think> </think> and give your final answer inside <answer> </answer>. "
    "Put the final result of each answer in \\boxed{}.\n"
    'Example for "What is 1+1?":\n' + SRPO_EXAMPLE
)
"""System prompt of the SRPO format: <think><answer><reflection><think><answer>, results in \\boxed{}."""

PLAIN_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves visual reasoning problems step by step. "
    "First reason inside <think> </think>, then give your answer inside <answer> </answer>, "
    "with nothing after it. Put the final result in \\boxed{}.\n"
    'Example for "What is 1+1?":\n' + PLAIN_EXAMPLE
)
"""System prompt of the single-attempt format: one <think></think><answer></answer>, \\boxed{}."""

SYSTEM_PROMPTS: dict[str, str] = {"srpo": SRPO_SYSTEM_PROMPT, "plain": PLAIN_SYSTEM_PROMPT, "none": ""}
"""``none``: no system prompt of ours (the chat template's default applies) — for a policy whose SFT
stage already taught the format."""


def system_prompt(kind: str) -> str:
    """The system prompt for a ``data.prompt`` value.

    Args:
        kind: ``"srpo"`` (two attempts with a reflection) or ``"plain"`` (one think + answer).

    Returns:
        The system prompt text.

    Raises:
        ValueError: `kind` is not a known prompt kind.
    """
    try:
        return SYSTEM_PROMPTS[kind]
    except KeyError:
        raise ValueError(
            f"data.prompt={kind!r} is not a system prompt kind; choose one of {sorted(SYSTEM_PROMPTS)}"
        ) from None
