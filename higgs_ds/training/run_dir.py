"""The run directory a live run owns: RUN/.lock held by rank 0 for the run's life, and refused to a second run."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from higgs_ds.distributed import all_reduce_sum

log = logging.getLogger(__name__)


class RunDirInUse(RuntimeError):
    """Another live run owns this run directory."""


def own_run_dir(run_dir: Path, de, device):
    """Rank 0 takes an exclusive lock on RUN/.lock for as long as the run lives (the OS drops it when the process
    ends, however it ends, so a requeued or restarted job takes over); every rank learns whether it got it."""
    import fcntl

    handle = None
    if de.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.ctime(),
                                     "slurm_job": os.environ.get("SLURM_JOB_ID")}))
            handle.flush()
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            handle = None
            log.error(in_use_message(run_dir, owner))
    held = all_reduce_sum([1.0 if handle is not None or not de.is_main else 0.0], device)[0] == de.world
    if not held:
        raise RunDirInUse(f"{run_dir} is in use by another run")
    return handle


def refuse_a_live_run_dir(run_dir: Path, de) -> None:
    """Every rank, before any process group: is RUN/.lock held by a live run? A second job started on the first's
    port would otherwise join the first job's process group before its own rank 0 could ask for the lock."""
    import fcntl

    lock = run_dir / ".lock"
    if not lock.is_file():
        return
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
            return
        except BlockingIOError:
            owner = handle.read().strip()
    if de.is_main:
        log.error(in_use_message(run_dir, owner))
    raise RunDirInUse(f"{run_dir} is in use by another run")


def in_use_message(run_dir: Path, owner: str) -> str:
    return (f"error: {run_dir} belongs to another run that is still alive ({owner}); wait for it, stop it, or give "
            f"this run another run_dir")
