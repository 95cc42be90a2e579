"""The job's progress in samples, with a rate and an ETA, logged by the driver while the job runs.

Ray Data's bars count rows per operator; what a user waits for is samples committed and shards
finalized. The driver asks the ShardTracker (the same answer the stall watchdog reads) every
``interval_s`` and logs one line:

    progress: 1,234 samples committed (18.2/s), 3/10 shards finalized, ETA 6m 25s

The ETA needs a sample count for the shards still open, which no listing gives without reading them:
it is estimated from the shards finalized so far (their mean samples per shard), and says so until the
first shard is finalized. The rate is over the last ``window_s`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from raypipe.logs import get_logger

log = get_logger(__name__)

INTERVAL_S = 30.0
WINDOW_S = 120.0


class ProgressLine:
    """Turns successive tracker answers into progress lines (Ray-free, clock injectable for tests)."""

    def __init__(
        self, shards: int, already: int = 0, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.shards = shards  # shards this run works on
        self.already = already  # samples committed before this run, in those shards
        self.window_s, self.clock = window_s, clock
        self.points: deque[tuple[float, int]] = deque()

    def line(self, progress: Mapping[str, Any]) -> str:
        now, samples = self.clock(), int(progress["samples"])
        self.points.append((now, samples))
        while len(self.points) > 2 and now - self.points[1][0] >= self.window_s:
            self.points.popleft()
        first_t, first_n = self.points[0]
        rate = (samples - first_n) / (now - first_t) if now > first_t else 0.0
        finalized = int(progress.get("shards_finalized", 0))
        text = f"progress: {samples:,} samples committed ({rate:.1f}/s), {finalized}/{self.shards} shards finalized"
        marked = int(progress.get("shards_marked", 0))
        return f"{text}, {self._eta(samples, finalized, marked, int(progress.get('samples_marked', 0)), rate)}"

    def _eta(self, samples: int, finalized: int, marked: int, in_marked: int, rate: float) -> str:
        if finalized >= self.shards:
            return "finishing"
        if marked == 0 or in_marked == 0:
            return "ETA after the first shard is finalized"
        expected = in_marked / marked * self.shards  # mean samples per finalized shard, for every shard
        left = max(0.0, expected - samples - self.already)
        if rate <= 0:
            return "ETA unknown (no samples committed lately)"
        return f"ETA {_duration(left / rate)} (from the {marked} shard(s) finalized so far)"


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@contextmanager
def progress_log(
    progress: Callable[[], Mapping[str, Any] | None], line: ProgressLine, interval_s: float = INTERVAL_S
) -> Iterator[None]:
    """Log ``line`` of ``progress()`` every ``interval_s`` seconds while the body runs (a daemon thread;
    a tracker that does not answer in time skips one line)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            answer = progress()
            if answer is not None:
                log.info("%s", line.line(answer))

    thread = threading.Thread(target=loop, name="raypipe-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
