"""Synchronous Megatron-Core dist-checkpoint saves without a multiprocessing Manager process.

Owns ``use_in_process_write_queue``. Megatron-Core 0.19's ``torch_dist`` writer hands each save's
write results back through ``filesystem_async.get_write_results_queue()``: a queue served by a
``multiprocessing.Manager`` — a separate Python process spawned on the first save (about 2 s) that
is not tied to the trainer's life: when the trainer is SIGKILLed (OOM killer, scheduler, a user)
the Manager is orphaned and keeps the job's stdout/stderr open. A *synchronous* save (all we use)
runs the writer threads inside the training process, so a plain thread-safe ``queue.Queue`` carries
the same results with no extra process. Asynchronous saves would need the Manager; we never start one.
"""

from __future__ import annotations

import queue


def use_in_process_write_queue() -> None:
    """Make Megatron's checkpoint writer report through an in-process queue (idempotent)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not hasattr(filesystem_async, "_results_queue"):
        raise RuntimeError(
            "megatron.core.dist_checkpointing.strategies.filesystem_async has no _results_queue: "
            "re-check srpo_mcore._compat.megatron_ckpt_queue against this megatron-core version"
        )
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()
