"""SRPO rewards: pure functions on strings, testable without a GPU, model or tokenizer server.

Public API::

    from srpo_mcore.rl.rewards import RewardScorer, summarize
    with RewardScorer(cfg.reward, count_tokens=lambda s: len(tok(s).input_ids)) as scorer:
        breakdowns = scorer.score(responses, golds)
        metrics = summarize(breakdowns)

Modules: ``format`` (tag parsing, format checks), ``answers`` (boxed/choice/normalisation),
``verify`` (math-verify, time-bounded, worker pool), ``reflection`` (the variants' formulas),
``scorer`` (batches), ``stats`` (per-step metrics).
"""

from srpo_mcore.rl.rewards.format import ParsedResponse, parse_response
from srpo_mcore.rl.rewards.reflection import RewardBreakdown, compute_reward, length_factor, reward_bounds
from srpo_mcore.rl.rewards.scorer import RewardScorer
from srpo_mcore.rl.rewards.stats import summarize
from srpo_mcore.rl.rewards.verify import AnswerVerifier, Verdict, verify_answer

__all__ = [
    "AnswerVerifier",
    "ParsedResponse",
    "RewardBreakdown",
    "RewardScorer",
    "Verdict",
    "compute_reward",
    "length_factor",
    "parse_response",
    "reward_bounds",
    "summarize",
    "verify_answer",
]
