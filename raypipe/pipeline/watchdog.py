"""Progress watchdog: a job that commits nothing for ``pipeline.stall_timeout_s`` ends with a clear error.

A hung stage (a GPU driver that stopped answering, a storage call that never returns, a deadlocked
library) would otherwise keep the job waiting forever. A driver-side thread polls the ShardTracker's
``progress()`` (fragments committed); when nothing changed for the timeout it raises
:class:`StalledJobError` in the driver's main thread, which stops Ray Data's execution (its actors and
tasks are shut down) and reaches the CLI as a runtime error (exit code 3). Everything committed so
far is kept: rerunning the same command resumes.

The error is raised from a signal handler (``SIGUSR2``, sent to the main thread only), so it also
interrupts a main thread that is blocked waiting. This needs ``run()`` to be called from the main
thread (the CLI and the ``jobs/`` entrypoints are); elsewhere the watchdog only logs the stall.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from raypipe.logs import get_logger

log = get_logger(__name__)

STALL_SIGNAL = signal.SIGUSR2
PROGRESS_CALL_TIMEOUT_S = 60.0


class StalledJobError(RuntimeError):
    """The job committed nothing for longer than ``pipeline.stall_timeout_s`` and was stopped."""


Progress = Mapping[str, int]


class Watchdog:
    """Polls ``progress()`` every ``poll_s``; calls ``on_stall(message)`` once when it did not change for
    ``timeout_s``. ``progress()`` may raise or return None (e.g. a call that timed out): that counts as
    no progress."""

    def __init__(
        self,
        progress: Callable[[], Progress | None],
        timeout_s: float,
        on_stall: Callable[[str], None],
        poll_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress, self.timeout_s, self.on_stall, self.clock = progress, timeout_s, on_stall, clock
        self.poll_s = poll_s if poll_s is not None else min(max(timeout_s / 20, 0.5), 30.0)
        self.message: str | None = None
        self._last: Progress | None = None
        self._last_change = clock()
        self._last_change_wall = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raypipe-watchdog", daemon=True)

    def start(self) -> None:
        self._last_change, self._last_change_wall = self.clock(), time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + PROGRESS_CALL_TIMEOUT_S)

    @property
    def fired(self) -> bool:
        return self.message is not None

    def check(self) -> bool:
        """One poll; True when the job counts as stalled (``on_stall`` was called)."""
        try:
            current = self.progress()
        except Exception as exc:  # a tracker that does not answer is no progress, not a reason to stop
            log.debug("watchdog: progress unavailable (%s: %s)", type(exc).__name__, exc)
            current = None
        now = self.clock()
        if current is not None and dict(current) != (dict(self._last) if self._last is not None else None):
            self._last, self._last_change, self._last_change_wall = dict(current), now, time.time()
            return False
        if now - self._last_change < self.timeout_s:
            return False
        self.message = self._stall_message(now - self._last_change)
        log.error("%s", self.message)
        self.on_stall(self.message)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.check():
                return

    def _stall_message(self, idle_s: float) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._last_change_wall))
        if self._last is None:
            last = "nothing was committed in this run"
        else:
            last = ", ".join(f"{name} {value}" for name, value in sorted(self._last.items()))
            last = f"last progress: {last}"
        return (
            f"no progress for {idle_s:.0f}s, over pipeline.stall_timeout_s={self.timeout_s:g}"
            f" (unchanged since {since}; {last}); the job was stopped. Committed work is kept:"
            " rerun the same command to resume, and look for a hung stage in the Ray logs"
        )


def tracker_progress(tracker: Any) -> Progress | None:
    """The ShardTracker's ``progress()``, or None when it does not answer in time."""
    import ray

    try:
        return dict(ray.get(tracker.progress.remote(), timeout=PROGRESS_CALL_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        return None


@contextmanager
def stall_watchdog(tracker: Any, timeout_s: float) -> Iterator[Watchdog]:
    """Run the body under a watchdog: :class:`StalledJobError` is raised in it when nothing is committed
    for ``timeout_s`` seconds."""
    with guard_main_thread(lambda: tracker_progress(tracker), timeout_s) as dog:
        yield dog


@contextmanager
def guard_main_thread(
    progress: Callable[[], Progress | None], timeout_s: float, poll_s: float | None = None
) -> Iterator[Watchdog]:
    """Ray-free core of :func:`stall_watchdog`: interrupt this (main) thread when ``progress`` stalls."""
    armed = threading.Event()  # set while the body runs: a late signal after it ended does nothing
    main = threading.main_thread()
    in_main = threading.current_thread() is main

    def interrupt(message: str) -> None:
        if in_main and armed.is_set():
            signal.pthread_kill(main.ident, STALL_SIGNAL)  # type: ignore[arg-type]
        elif not in_main:
            log.error("the job is not running in the main thread, so the watchdog cannot stop it")

    def on_signal(signum: int, frame: Any) -> None:
        if armed.is_set() and dog.message is not None:
            armed.clear()
            raise StalledJobError(dog.message)

    dog = Watchdog(progress, timeout_s, interrupt, poll_s=poll_s)
    previous = signal.signal(STALL_SIGNAL, on_signal) if in_main else None
    armed.set()
    dog.start()
    try:
        yield dog
    finally:
        armed.clear()
        dog.stop()
        if in_main:
            signal.signal(STALL_SIGNAL, previous)
