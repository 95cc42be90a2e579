"""A set of sample positions held as runs, so that its size follows the gaps, not the samples.

The plan, the read tasks and the ShardTracker keep the committed positions of every open shard. Fragments cover runs of
consecutive positions (a block of a shard's samples, in order), so a shard whose samples have all been
committed up to some point is one run however many samples it has: at 10^8 samples a set of ints
would hold gigabytes, this holds a few numbers per open shard.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class Positions:
    """Non-negative ints as sorted, disjoint, non-adjacent half-open runs ``[start, end)``."""

    __slots__ = ("_count", "_ends", "_starts")

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._count = 0
        if isinstance(values, Positions):  # a copy: run by run, never position by position
            self._starts, self._ends, self._count = list(values._starts), list(values._ends), values._count
        else:
            self.add(values)

    def add(self, values: Iterable[int]) -> int:
        """Add ``values``; returns how many of them were new."""
        added = 0
        for start, end in _runs(sorted(set(values))):
            added += self._add_run(start, end)
        return added

    def _add_run(self, start: int, end: int) -> int:
        if start < 0:
            raise ValueError(f"positions are non-negative, got {start}")
        # Runs that overlap or touch [start, end) are merged into one.
        first = bisect.bisect_left(self._ends, start)
        last = bisect.bisect_right(self._starts, end)
        held = sum(e - s for s, e in zip(self._starts[first:last], self._ends[first:last]))
        if first < last:
            start, end = min(start, self._starts[first]), max(end, self._ends[last - 1])
        new = (end - start) - held
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]
        self._count += new
        return new

    def covers(self, total: int) -> bool:
        """True when every position in ``range(total)`` is held."""
        if total <= 0:
            return True
        return bool(self._starts) and self._starts[0] == 0 and self._ends[0] >= total

    @property
    def runs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        """Every position, in order (as many steps as positions: for tests and small shards)."""
        for start, end in zip(self._starts, self._ends):
            yield from range(start, end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Positions) and self.runs == other.runs

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def __repr__(self) -> str:
        return f"Positions({self.runs})"


def _runs(values: list[int]) -> Iterable[tuple[int, int]]:
    """Sorted distinct ints as maximal runs ``[start, end)``."""
    start = previous = None
    for value in values:
        if start is None:
            start = previous = value
        elif value == previous + 1:  # type: ignore[operator]
            previous = value
        else:
            yield start, previous + 1  # type: ignore[operator]
            start = previous = value
    if start is not None:
        yield start, previous + 1  # type: ignore[operator]
