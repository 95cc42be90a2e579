"""The driver's progress line: samples committed, rate over a window, shards finalized, ETA."""

from __future__ import annotations

import logging
import time

import pytest

from raypipe.pipeline.progress import ProgressLine, progress_log
from tests.helpers import FakeClock


def test_rate_and_eta_come_from_the_samples_and_the_finalized_shards() -> None:
    clock = FakeClock()
    line = ProgressLine(shards=10, window_s=60, clock=clock)
    first = line.line({"samples": 0, "shards_finalized": 0})
    assert (
        first == "progress: 0 samples committed (0.0/s), 0/10 shards finalized, ETA after the first shard is finalized"
    )
    clock.now = 50.0
    shown = line.line({"samples": 500, "shards_finalized": 2, "shards_marked": 2, "samples_marked": 200})
    # 100 samples a shard, so 1,000 in all: 500 left at 10/s
    assert shown == (
        "progress: 500 samples committed (10.0/s), 2/10 shards finalized, "
        "ETA 50s (from the 2 shard(s) finalized so far)"
    )


def test_the_rate_forgets_what_is_older_than_the_window_and_the_eta_counts_earlier_runs() -> None:
    clock = FakeClock()
    line = ProgressLine(shards=4, already=100, window_s=60, clock=clock)
    for t, n in ((0, 0), (30, 900), (90, 960), (150, 1020)):  # fast at first, then 1/s
        clock.now = t
        shown = line.line({"samples": n, "shards_finalized": 1, "shards_marked": 1, "samples_marked": 1000})
    # window: from t=90 on -> (1020 - 960) / 60 = 1.0/s; 4,000 expected, 1,120 committed: 2,880 s
    assert "(1.0/s)" in shown and "ETA 48m 00s" in shown
    assert "finishing" in line.line({"samples": 4000, "shards_finalized": 4})


def test_the_log_thread_logs_lines_and_skips_a_silent_tracker(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([None, {"samples": 3, "shards_finalized": 0}])
    with (
        caplog.at_level(logging.INFO, logger="raypipe.pipeline.progress"),
        progress_log(lambda: next(answers, None), ProgressLine(shards=1), interval_s=0.05),
    ):
        time.sleep(0.4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines == [
        "progress: 3 samples committed (0.0/s), 0/1 shards finalized, ETA after the first shard is finalized"
    ]
