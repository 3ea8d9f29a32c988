"""stdlib logging for higgs-ds: one line format with the time (and the rank in training runs); in a training run
rank 0 logs progress and every rank logs warnings."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int | None = None, world: int = 1) -> None:
    """Configure the `higgs_ds` logger once per process (a second call replaces the first's handler)."""
    logger = logging.getLogger("higgs_ds")
    tag = f" rank {rank}" if rank is not None and world > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[higgs-ds %(asctime)s{tag}] %(message)s", datefmt="%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if not rank else logging.WARNING)
    logger.propagate = False
