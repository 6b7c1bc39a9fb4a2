"""Console logging for SPMD jobs: rank 0 speaks, every rank may warn.

Owns: ``get_logger(name)``, a ``logging.Logger`` whose records print (with time and level) only on
global rank 0, while warnings and errors print on every rank, prefixed with that rank. The rank is
read when a record is emitted (``torch.distributed`` if initialised, else ``$RANK``, else 0), so a
logger made at import time, before process groups exist, still behaves.

Does not own: the metrics record (``metrics_log``), wandb, or the logging of third-party libraries
(our loggers do not propagate to the root logger, so a library's ``basicConfig`` cannot double them).
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(rank_prefix)s%(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def global_rank() -> int:
    """The global rank of this process: torch.distributed if initialised, else ``$RANK``, else 0."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _RankFilter(logging.Filter):
    """Pass everything on rank 0 and only warnings and above elsewhere; tag warnings with the rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = global_rank()
        if rank != 0 and record.levelno < logging.WARNING:
            return False
        record.rank_prefix = f"[rank {rank}] " if record.levelno >= logging.WARNING else ""
        return True


def get_logger(name: str) -> logging.Logger:
    """A logger that prints INFO and above on rank 0 and WARNING and above, rank-tagged, on every rank.

    Args:
        name: The logger name, usually ``__name__``.

    Returns:
        The ``logging.Logger`` for `name`, configured once (calling again adds no second handler).
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankFilter) for h in logger.handlers for f in h.filters):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        handler.addFilter(_RankFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
