"""The ShardTracker's state is O(open shards), not O(samples): committed positions are held as runs
(:class:`raypipe.pipeline.intervals.Positions`) and dropped once a shard is claimed for finalizing."""

from __future__ import annotations

import itertools
import pickle
import random

import pytest

from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.sink import ShardTracker


@pytest.mark.parametrize("seed", range(5))
def test_positions_behave_as_a_set(seed: int) -> None:
    rng = random.Random(seed)
    positions, reference = Positions(), set()
    for _ in range(300):
        batch = [rng.randrange(200) for _ in range(rng.randrange(1, 12))]
        start = rng.randrange(200)
        batch += range(start, start + rng.randrange(20))  # runs, as fragments cover them
        assert positions.add(batch) == len(set(batch) - reference)
        reference |= set(batch)
        assert len(positions) == len(reference)
        assert all((i in positions) == (i in reference) for i in range(-2, 225))
        total = rng.randrange(230)
        assert positions.covers(total) == all(i in reference for i in range(total))
        runs = positions.runs
        assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(runs))  # disjoint, never touching


def test_positions_refuse_a_negative_position() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Positions([-1])


def commit_shards(tracker: ShardTracker, shards: int, per_shard: int, fragment: int, seed: int) -> list[str]:
    """Commit every sample of ``shards`` shards in fragments of ``fragment`` samples, the fragments of each
    shard in shuffled order and shards interleaved, then the end-of-shard record; the shards claimed."""
    rng = random.Random(seed)
    work = [
        (f"s{s:04d}.tar", list(range(i, min(i + fragment, per_shard))))
        for s in range(shards)
        for i in range(0, per_shard, fragment)
    ]
    rng.shuffle(work)
    claimed = []
    for shard, seqs in work:
        if tracker.commit(shard, seqs, None):
            claimed.append(shard)
    for s in range(shards):
        if tracker.commit(f"s{s:04d}.tar", [], per_shard):
            claimed.append(f"s{s:04d}.tar")
    return claimed


def state_bytes(tracker: ShardTracker) -> int:
    return len(pickle.dumps(tracker.__dict__))


def test_every_shard_is_claimed_exactly_once_and_counted() -> None:
    tracker = ShardTracker({"s0000.tar": ([0, 1, 2], None)}, driver_pid=0, kill_after_fragments=None)
    claimed = commit_shards(tracker, shards=20, per_shard=50, fragment=8, seed=1)
    assert sorted(claimed) == [f"s{s:04d}.tar" for s in range(20)]
    assert tracker.progress()["samples"] == 20 * 50 - 3  # three were committed by an earlier run
    assert tracker.progress()["shards_finalized"] == 20
    assert not tracker.commit("s0003.tar", [4, 5], 50)  # a retried write task's rows: claimed already
    assert tracker.is_finalized("s0003.tar") and not tracker.is_finalized("s9999.tar")


def test_state_does_not_grow_with_the_samples_committed() -> None:
    # The same 4 shards with 100x the samples: once finalized, the tracker holds names only, and an open
    # shard whose positions are committed in order is one run whatever its size.
    small, large = (ShardTracker({}, 0, None) for _ in range(2))
    commit_shards(small, shards=4, per_shard=1_000, fragment=8, seed=2)
    commit_shards(large, shards=4, per_shard=100_000, fragment=8, seed=2)
    assert state_bytes(large) <= state_bytes(small) + 64
    for tracker, size in ((small, 1_000), (large, 100_000)):
        for start in range(0, size, 500):  # a shard open to its last sample, its fragments in order
            tracker.commit("open.tar", list(range(start, start + 500)), None)
    assert state_bytes(large) <= state_bytes(small) + 64
    assert len(large._seqs["open.tar"].runs) == 1


def test_a_planned_shard_carries_its_committed_positions_as_runs() -> None:
    """What the plan hands every read task: a million committed samples with one gap are two runs."""
    import pickle

    from raypipe.pipeline.read import ShardWork

    committed = Positions(i for i in range(1_000_001) if i != 500_000)
    work = ShardWork(uri="s3://b/in/a.tar", name="a.tar", committed=committed)
    assert committed.runs == [(0, 500_000), (500_001, 1_000_001)] and len(committed) == 1_000_000
    assert len(pickle.dumps(work)) < 1_000
    copy = Positions(committed)
    copy.add([500_000])
    assert copy.covers(1_000_001) and not committed.covers(1_000_001)  # a copy, not a view
    assert 500_000 not in committed and 499_999 in committed
