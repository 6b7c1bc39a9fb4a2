"""Batch scoring: responses + gold answers -> per-response reward breakdowns.

Owns: the glue of the reward pipeline for one step — parse every response, verify the first and
last answers of all of them in one pass through the verifier pool (deduplicated), count the token
lengths with the policy's tokenizer (a batch callable given by the caller, never loaded here) while
the workers verify, and apply the configured variant.

Does not own: the formulas (``reflection``), verification (``verify``) or statistics (``stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from srpo_mcore.config import RewardConfig
from srpo_mcore.rl.rewards.format import parse_response
from srpo_mcore.rl.rewards.reflection import RewardBreakdown, compute_reward
from srpo_mcore.rl.rewards.verify import AnswerVerifier, Verdict


class RewardScorer:
    """Score batches of responses with the SRPO reward (or the GRPO baseline).

    Args:
        cfg: The reward config (variant and every constant).
        count_tokens: Token counts of a batch of strings under the policy's tokenizer, e.g.
            ``lambda xs: [len(ids) for ids in tok(xs, add_special_tokens=False).input_ids]``.
        verifier: A verifier to use; by default one is created from ``cfg`` (a worker pool of
            ``cfg.num_workers``) and closed by `close`.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        count_tokens: Callable[[list[str]], Sequence[int]],
        verifier: AnswerVerifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.count_tokens = count_tokens
        self._own_verifier = verifier is None
        self.verifier = verifier or AnswerVerifier(num_workers=cfg.num_workers, timeout_s=cfg.verify_timeout_s)

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_verifier:
            self.verifier.close()

    def score(
        self,
        responses: Sequence[str],
        golds: Sequence[str],
        response_lengths: Sequence[int] | None = None,
    ) -> list[RewardBreakdown]:
        """Reward breakdowns for `responses` against `golds` (same length).

        Args:
            responses: Decoded responses (the generated text only, no prompt).
            golds: Gold answers.
            response_lengths: ``L`` per response in tokens when the caller already has the token
                ids; otherwise counted with ``count_tokens``.
        """
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        if response_lengths is not None and len(response_lengths) != len(responses):
            raise ValueError(f"{len(response_lengths)} response lengths for {len(responses)} responses")
        parsed = [parse_response(r) for r in responses]
        pairs: dict[tuple[str | None, str], int] = {}
        for p, gold in zip(parsed, golds):
            pairs.setdefault((p.first_answer, gold), len(pairs))
            pairs.setdefault((p.last_answer, gold), len(pairs))
        collect = self.verifier.submit(list(pairs))
        spans = [p.first_attempt_span() for p in parsed]
        firsts = [text[s[0] : s[1]] for text, s in zip(responses, spans) if s]
        first_counts = iter(self._count(firsts))
        first_lengths = [next(first_counts) if s else 0 for s in spans]
        lengths = list(response_lengths) if response_lengths is not None else self._count(list(responses))
        verdicts: list[Verdict] = collect()
        return [
            compute_reward(
                p,
                verdicts[pairs[(p.first_answer, gold)]],
                verdicts[pairs[(p.last_answer, gold)]],
                length,
                first_length,
                self.cfg,
            )
            for p, gold, length, first_length in zip(parsed, golds, lengths, first_lengths)
        ]

    def _count(self, texts: list[str]) -> list[int]:
        counts = list(self.count_tokens(texts)) if texts else []
        if len(counts) != len(texts):
            raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} strings")
        return counts
