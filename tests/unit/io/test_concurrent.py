"""Planning's storage requests run with bounded concurrency (raypipe.io.concurrent.map_bounded)."""

from __future__ import annotations

import threading
import time

import pytest

from raypipe.io.concurrent import map_bounded


def test_results_keep_the_input_order_and_concurrency_is_bounded() -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def slow(value: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01 * (value % 3))
        with lock:
            running[0] -= 1
        return value * 2

    assert map_bounded(slow, range(100), limit=6) == [v * 2 for v in range(100)]
    assert 1 < peak[0] <= 6


def test_the_first_failure_in_item_order_is_raised_after_every_call_ended() -> None:
    ended: list[int] = []

    def fail_on_odd(value: int) -> int:
        time.sleep(0.02 if value == 1 else 0.0)
        ended.append(value)
        if value % 2:
            raise ValueError(f"bad item {value}")
        return value

    with pytest.raises(ValueError, match="bad item 1"):
        map_bounded(fail_on_odd, range(10), limit=4)
    assert sorted(ended) == list(range(10))
