"""Fault-injection hooks for the fault-tolerance tests: every one of them, in one place.

Each hook is inert unless its environment variable is set, and none changes a result: a hook only
kills or stalls the process it runs in, exactly like a crash or a hang would. Production runs never
set these variables.

- ``RAYPIPE_FAULT_KILL_DRIVER_AFTER_FRAGMENTS=N`` (ShardTracker actor): SIGKILL the driver once N
  fragments are committed.
- ``RAYPIPE_FAULT_KILL_ANONYMIZE_AT_BATCH=N`` (Anonymize stage, in the GPU actor): ``os._exit(1)``
  half-way through the actor's Nth batch (faces found, none anonymized yet): the batch dies with it.
- ``RAYPIPE_FAULT_HANG_ANONYMIZE_AT_BATCH=N`` (Anonymize stage): sleep forever half-way through the
  actor's Nth batch.
- ``RAYPIPE_FAULT_SLOW_ANONYMIZE_S=S`` (Anonymize stage): sleep S seconds half-way through every
  batch, so a test can act while the GPU stage still has work left (a slow GPU).
- ``RAYPIPE_FAULT_ONCE_DIR=DIR`` (with the two above): each fault fires at most once per folder (a
  marker file), across actor restarts; unset, every actor fires on its Nth batch.

The variables reach Ray workers through the job's runtime environment (see :func:`fault_env`).
"""

from __future__ import annotations

import os
import sys
import time

from raypipe.logs import get_logger

log = get_logger(__name__)

PREFIX = "RAYPIPE_FAULT_"
KILL_DRIVER_AFTER_FRAGMENTS = "RAYPIPE_FAULT_KILL_DRIVER_AFTER_FRAGMENTS"
KILL_ANONYMIZE_AT_BATCH = "RAYPIPE_FAULT_KILL_ANONYMIZE_AT_BATCH"
HANG_ANONYMIZE_AT_BATCH = "RAYPIPE_FAULT_HANG_ANONYMIZE_AT_BATCH"
SLOW_ANONYMIZE_S = "RAYPIPE_FAULT_SLOW_ANONYMIZE_S"
ONCE_DIR = "RAYPIPE_FAULT_ONCE_DIR"
HOOKS = (KILL_DRIVER_AFTER_FRAGMENTS, KILL_ANONYMIZE_AT_BATCH, HANG_ANONYMIZE_AT_BATCH, SLOW_ANONYMIZE_S, ONCE_DIR)


def env_count(name: str) -> int | None:
    """The positive integer in the variable ``name``, or None when it is unset or empty."""
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fault_env() -> dict[str, str]:
    """The fault variables set in this process, to hand to Ray workers (empty in production)."""
    return {name: value for name, value in os.environ.items() if name.startswith(PREFIX)}


def claim(name: str) -> bool:
    """True if the fault ``name`` may fire now: always, or once per ``RAYPIPE_FAULT_ONCE_DIR``."""
    folder = os.environ.get(ONCE_DIR)
    if not folder:
        return True
    try:
        fd = os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def on_anonymize_batch(batch: int) -> None:
    """Called by the Anonymize stage half-way through its ``batch``-th batch (1-based)."""
    slow = env_count(SLOW_ANONYMIZE_S)
    if slow:
        time.sleep(slow)
    if batch == env_count(KILL_ANONYMIZE_AT_BATCH) and claim(KILL_ANONYMIZE_AT_BATCH):
        log.warning("fault injection: the anonymize actor (pid %d) exits in batch %d", os.getpid(), batch)
        sys.stderr.flush()
        os._exit(1)
    if batch == env_count(HANG_ANONYMIZE_AT_BATCH) and claim(HANG_ANONYMIZE_AT_BATCH):
        log.warning("fault injection: the anonymize actor (pid %d) hangs in batch %d", os.getpid(), batch)
        while True:
            time.sleep(3600)
