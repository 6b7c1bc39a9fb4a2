"""The verifier pool agrees with in-process verification and bounds every pair in time."""

from __future__ import annotations

import os
import signal
import threading
import time

from srpo_mcore.rl.rewards.verify import AnswerVerifier, bounded_verify, verify_answer

PAIRS = [
    ("0.5", "\\frac{1}{2}"),
    ("(B)", "B"),
    ("The answer is C", "B"),
    ("x=7", "7"),
    ("\\sqrt{2}", "\\sqrt 2"),
    ("2\\pi", "6.283185307"),
    ("8", "7"),
    (None, "7"),
    ("yes", "Yes"),
    ("5", ""),
]
PATHOLOGICAL = "9^{9^{9^{9^{9^{9}}}}}"


def test_pool_matches_in_process() -> None:
    expected = [verify_answer(p, g) for p, g in PAIRS]
    with AnswerVerifier(num_workers=2, timeout_s=5.0) as pool:
        assert pool.verify(PAIRS) == expected
        assert pool.verify(PAIRS[::-1]) == expected[::-1]  # reusable, order kept
        assert pool.verify([]) == []


def test_pathological_input_costs_at_most_the_bound() -> None:
    start = time.monotonic()
    v = bounded_verify(PATHOLOGICAL, "3", timeout_s=1.0)
    assert v.timed_out and not v.correct
    assert time.monotonic() - start < 2.0  # the 1 s bound plus slack for a loaded machine
    with AnswerVerifier(num_workers=2, timeout_s=1.0) as pool:
        pool.verify([("1", "1")])  # workers started
        start = time.monotonic()
        out = pool.verify([(PATHOLOGICAL, "3"), ("7", "7"), ("0.5", "\\frac12")])
        elapsed = time.monotonic() - start
    assert [v.method for v in out] == ["timeout", "string", "math"]
    assert [v.correct for v in out] == [False, True, True]
    assert elapsed < 4.0, elapsed  # one bounded pair (1 s) + two quick ones, with slack


def test_stuck_worker_is_killed_and_replaced() -> None:
    """A worker that cannot be interrupted (SIGSTOP here) is killed after timeout+grace; the rest of
    its queue is finished by a fresh worker."""
    # timeout 2 s: the replacement worker's first (cold) comparison took > 0.5 s on a loaded 2-core CI run
    with AnswerVerifier(num_workers=1, timeout_s=2.0, kill_grace_s=0.5) as pool:
        pool.verify([("1", "1")])
        worker = pool._workers[0].proc
        os.kill(worker.pid, signal.SIGSTOP)
        start = time.monotonic()
        out = pool.verify([("7", "7"), ("8", "7"), ("B", "B")])
        elapsed = time.monotonic() - start
        assert pool.killed_workers == 1 and not worker.is_alive()
    assert [v.method for v in out] == ["timeout", "math", "choice"]
    assert [v.correct for v in out] == [False, False, True]
    assert elapsed < 8.0


def test_bounded_verify_off_main_thread_still_answers() -> None:
    box = []
    t = threading.Thread(target=lambda: box.append(bounded_verify("0.5", "\\frac12", 1.0)))
    t.start()
    t.join(30)
    assert box and box[0].correct
