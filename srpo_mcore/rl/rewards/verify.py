"""Answer verification: math-verify equivalence, choice letters, string fallback — time-bounded.

Owns: the verdict on one (predicted answer, gold answer) pair and running many of them fast and
safely:

- ``verify_answer``: choice golds are compared as letters; otherwise both sides are parsed with
  math-verify (``\\boxed{}``-wrapped so bare LaTeX like ``\\frac12`` parses) and compared
  symbolically/numerically; a normalised string comparison is the last resort. A gold answer that
  math-verify cannot parse is *never* free credit: only the string comparison can then succeed,
  and the verdict says ``gold_unparseable`` so the event is counted.
- ``bounded_verify``: the same, interrupted after ``timeout_s`` with SIGALRM (main thread only).
- ``AnswerVerifier``: a pool of worker processes, one pair at a time per worker, each pair bounded
  in the worker by SIGALRM and, as a backstop for work that a signal cannot interrupt (a huge
  integer power inside C), by the parent killing and replacing the worker. With ``num_workers=0``
  it verifies in-process.

Does not own: which answers to compare (``format``) or what a verdict is worth (``reflection``).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from srpo_mcore.rl.rewards.answers import answer_core, gold_choice, normalize_text, pred_choice

# math-verify warns once that its own (signal) timeouts are off: we bound each pair ourselves.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Verdict:
    """The judgement on one predicted answer."""

    correct: bool
    method: str
    """How it was decided: choice | math | string | empty | timeout | error."""
    gold_unparseable: bool = False
    """math-verify could not parse the (non-choice) gold answer."""

    @property
    def timed_out(self) -> bool:
        return self.method == "timeout"


TIMEOUT = Verdict(False, "timeout")


@functools.lru_cache(maxsize=16384)
def _parse(text: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(f"\\boxed{{{text}}}", parsing_timeout=None))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=65536)
def verify_answer(pred: str | None, gold: str) -> Verdict:
    """Judge `pred` (an answer block's content, or None when missing) against `gold`. Never raises."""
    try:
        return _verify(pred, gold)
    except Exception:  # a bug in a parser must cost one answer, not a training step
        return Verdict(False, "error")


def _verify(pred: str | None, gold: str) -> Verdict:
    if pred is None or not pred.strip():
        return Verdict(False, "empty")
    pred_text, gold_text = answer_core(pred), answer_core(gold)
    letter = gold_choice(gold_text)
    if letter is not None:
        return Verdict(pred_choice(pred_text) == letter, "choice")
    from math_verify import verify

    gold_parsed = _parse(gold_text)
    same_string = bool(gold_text) and normalize_text(pred_text) == normalize_text(gold_text)
    # math-verify falls back to the raw string; only a parsed expression makes a gold checkable.
    if not any(not isinstance(x, str) for x in gold_parsed):
        return Verdict(same_string, "string", gold_unparseable=True)
    if same_string:
        return Verdict(True, "string")
    pred_parsed = _parse(pred_text)
    if not pred_parsed:
        return Verdict(False, "math")
    ok = verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)  # type: ignore[arg-type]
    return Verdict(bool(ok), "math")


class _Timeout(BaseException):
    """Raised by SIGALRM inside a bounded verification (BaseException: parsers catch Exception)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def bounded_verify(pred: str | None, gold: str, timeout_s: float) -> Verdict:
    """`verify_answer` bounded to `timeout_s` seconds of wall time (SIGALRM; main thread only).

    Outside the main thread no signal can be used and the call is unbounded: use `AnswerVerifier`.
    """
    if threading.current_thread() is not threading.main_thread():
        return verify_answer(pred, gold)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return verify_answer(pred, gold)
    except _Timeout:
        return TIMEOUT
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _worker_main(conn: Connection, timeout_s: float) -> None:
    """Worker loop: receive lists of (index, pred, gold), send back (index, Verdict) one by one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        for index, pred, gold in batch:
            conn.send((index, bounded_verify(pred, gold, timeout_s)))


class _Worker:
    def __init__(self, ctx: Any, timeout_s: float) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, timeout_s), daemon=True)
        self.proc.start()
        child.close()
        self.pending: deque[tuple[int, str | None, str]] = deque()
        self.since = 0.0  # when the item at the head of `pending` started (last progress)

    def submit(self, items: list[tuple[int, str | None, str]]) -> None:
        self.pending.extend(items)
        self.since = time.monotonic()
        self.conn.send(items)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class AnswerVerifier:
    """Verify many (pred, gold) pairs, each bounded in time, in a pool of worker processes.

    Args:
        num_workers: Worker processes; 0 verifies in-process (main thread: bounded by SIGALRM),
            -1 starts one per CPU core.
        timeout_s: Bound on one pair; a pair over it counts as incorrect (method ``timeout``).
        kill_grace_s: Extra time before a worker that ignores its alarm is killed and replaced.
    """

    def __init__(self, num_workers: int = -1, timeout_s: float = 5.0, kill_grace_s: float = 1.0) -> None:
        if num_workers < -1:
            raise ValueError(f"num_workers must be -1 (one per core), 0 (in-process) or positive, got {num_workers}")
        self.num_workers = (os.cpu_count() or 1) if num_workers == -1 else num_workers
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        self.killed_workers = 0
        self._ctx = mp.get_context("spawn")  # never fork a trainer holding threads and process groups
        self._workers: list[_Worker] = []

    def __enter__(self) -> AnswerVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for w in self._workers:
            with suppress(BrokenPipeError, OSError):
                w.conn.send(None)
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
        self._workers.clear()

    def verify(self, pairs: Sequence[tuple[str | None, str]]) -> list[Verdict]:
        """Verdicts for (pred, gold) pairs, in order. Never raises for any input strings."""
        return self.submit(pairs)()

    def submit(self, pairs: Sequence[tuple[str | None, str]]) -> Callable[[], list[Verdict]]:
        """Start verifying `pairs` in the workers and return a function that waits for the verdicts.

        The caller can do other work (e.g. count tokens) while the workers verify. In-process
        (``num_workers=0``) the work happens when the returned function is called.
        """
        if self.num_workers == 0:
            return lambda: [bounded_verify(p, g, self.timeout_s) for p, g in pairs]
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx, self.timeout_s))
        if any(w.pending for w in self._workers):
            raise RuntimeError("AnswerVerifier.submit: the previous batch has not been collected")
        items = [(i, p, g) for i, (p, g) in enumerate(pairs)]
        for w, chunk in zip(self._workers, _split(items, len(self._workers))):
            if chunk:
                w.submit(chunk)

        def collect() -> list[Verdict]:
            results: list[Verdict | None] = [None] * len(pairs)
            for index, verdict in self._collect():
                results[index] = verdict
            assert all(r is not None for r in results)
            return results  # type: ignore[return-value]

        return collect

    def _collect(self) -> Iterator[tuple[int, Verdict]]:
        deadline = self.timeout_s + self.kill_grace_s
        while any(w.pending for w in self._workers):
            busy: dict[Any, _Worker] = {w.conn: w for w in self._workers if w.pending}
            now = time.monotonic()
            wait_s = max(0.0, min(w.since + deadline - now for w in busy.values()))
            ready = wait(list(busy), timeout=wait_s)
            for conn in ready:
                w = busy[conn]
                try:
                    index, verdict = w.conn.recv()
                except (EOFError, OSError):
                    yield from self._replace(w, "error")
                    continue
                w.pending.popleft()
                w.since = time.monotonic()
                yield index, verdict
            now = time.monotonic()
            for w in list(busy.values()):
                if w.pending and now - w.since > deadline and w.conn not in ready:
                    yield from self._replace(w, "timeout")

    def _replace(self, w: _Worker, method: str) -> Iterator[tuple[int, Verdict]]:
        """Kill a stuck or dead worker; its current pair fails, the rest go to a fresh worker."""
        w.kill()
        self.killed_workers += 1
        index, _, _ = w.pending.popleft()
        yield index, Verdict(False, method)
        fresh = _Worker(self._ctx, self.timeout_s)
        self._workers[self._workers.index(w)] = fresh
        if w.pending:
            fresh.submit(list(w.pending))


def _split(items: list[Any], n: int) -> list[list[Any]]:
    """Round-robin split so each worker gets a similar mix of easy and hard pairs."""
    return [items[i::n] for i in range(n)]


@contextmanager
def answer_verifier(num_workers: int = -1, timeout_s: float = 5.0) -> Iterator[AnswerVerifier]:
    """``with answer_verifier(...) as v:`` — a pool that is always shut down."""
    v = AnswerVerifier(num_workers=num_workers, timeout_s=timeout_s)
    try:
        yield v
    finally:
        v.close()
