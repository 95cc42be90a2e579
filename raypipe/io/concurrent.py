"""Storage requests with bounded concurrency.

Planning makes a few requests per input shard (its identity, its marker, its fragments). One after
another, at 20-50 ms each on object storage, 10^5 shards take hours; a bounded number in flight keeps
the driver's time per shard flat without flooding the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

REQUESTS_IN_FLIGHT = 16

In = TypeVar("In")
Out = TypeVar("Out")


def map_bounded(fn: Callable[[In], Out], items: Iterable[In], limit: int = REQUESTS_IN_FLIGHT) -> list[Out]:
    """``[fn(item) for item in items]`` with at most ``limit`` calls running at once, in order.

    The first call that raises (in item order) raises here, after every call has ended.
    """
    items = list(items)
    if len(items) <= 1 or limit <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(limit, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    return [future.result() for future in futures]
