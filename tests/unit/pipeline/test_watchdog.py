"""The progress watchdog: a stalled job ends with a clear error, a progressing one is left alone."""

from __future__ import annotations

import threading
import time

import pytest

from raypipe.pipeline.watchdog import StalledJobError, Watchdog, guard_main_thread
from tests.helpers import FakeClock


def test_no_change_for_the_timeout_fires_once_with_the_last_progress() -> None:
    clock, calls = FakeClock(), []
    progress = {"fragments": 3, "samples": 6}
    dog = Watchdog(lambda: progress, 100.0, calls.append, poll_s=1.0, clock=clock)
    assert not dog.check()  # first sight of the counters is progress
    clock.now = 99.0
    assert not dog.check() and not calls
    clock.now = 101.0
    assert dog.check()
    assert len(calls) == 1 and dog.fired
    assert "pipeline.stall_timeout_s=100" in calls[0]
    assert "fragments 3, samples 6" in calls[0] and "rerun the same command" in calls[0]


def test_changing_counters_keep_the_job_alive() -> None:
    clock, calls = FakeClock(), []
    counter = {"fragments": 0}
    dog = Watchdog(lambda: dict(counter), 10.0, calls.append, clock=clock)
    for step in range(1, 20):
        clock.now = step * 9.0
        counter["fragments"] = step
        assert not dog.check()
    assert not calls


def test_a_tracker_that_does_not_answer_counts_as_no_progress() -> None:
    clock, calls = FakeClock(), []

    def broken() -> dict[str, int]:
        raise TimeoutError("no answer")

    dog = Watchdog(broken, 5.0, calls.append, clock=clock)
    clock.now = 6.0
    assert dog.check()
    assert "nothing was committed in this run" in calls[0]


def test_the_guard_interrupts_a_blocked_main_thread() -> None:
    started = time.monotonic()
    with (
        pytest.raises(StalledJobError, match=r"stall_timeout_s=0\.5"),
        guard_main_thread(lambda: {"fragments": 1}, 0.5, poll_s=0.05),
    ):
        threading.Event().wait(30)  # blocked, as the driver is while Ray Data runs
    assert time.monotonic() - started < 10


def test_the_guard_is_silent_when_the_body_finishes_in_time() -> None:
    with guard_main_thread(lambda: {"fragments": 1}, 5.0, poll_s=0.05) as dog:
        time.sleep(0.2)
    assert not dog.fired
    time.sleep(0.2)  # no late interruption after the body ended
