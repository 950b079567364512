"""Rank-zero logging: messages from every rank would repeat N times in a distributed job."""

from __future__ import annotations

import logging
import sys

from xtc_ds._rank import rank_and_world

__all__ = ["logger", "is_rank_zero", "log_rank_zero", "warn_once", "announce"]

logger = logging.getLogger("xtc_ds")
_warned: set[str] = set()


def is_rank_zero() -> bool:
    """True on global rank 0, or when no distributed job is running."""
    return rank_and_world()[0] == 0


def log_rank_zero(level: int, message: str) -> None:
    """Log ``message`` at ``level`` on rank 0 only."""
    if is_rank_zero():
        logger.log(level, message)


def warn_once(message: str) -> None:
    """Warn (on every rank, since each may differ) the first time ``message`` is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def announce(message: str) -> None:
    """Print ``message`` to stderr on rank 0 whatever the logging setup: for waits that must not look like a hang."""
    if is_rank_zero():
        print(message, file=sys.stderr, flush=True)
