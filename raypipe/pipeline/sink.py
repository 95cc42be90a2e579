"""Write stage: a Ray Data datasink that commits fragments and finalizes shards as they complete.

Each write task groups its rows by shard and publishes one fragment per shard. A small actor, the
:class:`ShardTracker`, learns which samples every fragment covers; the write task whose fragment
completes a shard is told so (exactly once) and finalizes it on the spot, so output shards appear
while the job runs instead of at its end. Anything a crash leaves unfinalized is finalized by the
sink's ``on_write_complete`` on the driver, or by the rerun.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from ray.data.datasource import Datasink

from raypipe.layout import OutputLayout
from raypipe.logs import get_logger
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard, is_complete
from raypipe.pipeline.faults import KILL_DRIVER_AFTER_FRAGMENTS
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.task import SampleTask, unpack_batch

log = get_logger(__name__)

# Test hook for crash/resume tests (raypipe.pipeline.faults): SIGKILL the driver after N fragments.
KILL_AFTER_FRAGMENTS_ENV = KILL_DRIVER_AFTER_FRAGMENTS


class ShardTracker:
    """Ray actor (created by :func:`make_tracker`): committed sample positions per open shard.

    Its state is O(open shards): positions are held as runs (:class:`Positions`), and a shard's are
    dropped once it is claimed for finalizing; only its name is kept, to answer :meth:`is_finalized`.
    """

    def __init__(
        self,
        committed: Mapping[str, tuple[Iterable[int], int | None]],
        driver_pid: int,
        kill_after_fragments: int | None,
    ) -> None:
        self._seqs: dict[str, Positions] = {s: Positions(seqs) for s, (seqs, _) in committed.items()}  # copies
        self._totals: dict[str, int | None] = {s: total for s, (_, total) in committed.items()}
        self._claimed: set[str] = set()
        self._markers: dict[str, dict[str, Any]] = {}
        self._fragments = 0
        self._samples = 0
        self._driver_pid = driver_pid
        self._kill_after = kill_after_fragments

    def commit(self, shard: str, seqs: list[int], total: int | None) -> bool:
        """Record a committed fragment; True exactly once per shard: when it first becomes complete."""
        self._fragments += 1
        if self._kill_after is not None and self._fragments >= self._kill_after:
            log.warning(
                "fault injection: killing the driver (pid %d) after %d fragments",
                self._driver_pid,
                self._fragments,
            )
            os.kill(self._driver_pid, signal.SIGKILL)
        if shard in self._claimed:
            return False  # a retried task's rows of a shard already claimed: counted the first time
        known = self._seqs.setdefault(shard, Positions())
        self._samples += known.add(seqs)
        if total is not None:
            self._totals[shard] = total
        total = self._totals.get(shard)
        if total is not None and known.covers(total):
            self._claimed.add(shard)
            del self._seqs[shard], self._totals[shard]
            return True
        return False

    def is_finalized(self, shard: str) -> bool:
        return shard in self._claimed

    def finalized(self, shard: str, marker: dict[str, Any]) -> None:
        """Record the completion marker of a shard this run finalized (its evidence, as written)."""
        self._markers[shard] = marker

    def markers(self) -> dict[str, dict[str, Any]]:
        return dict(self._markers)

    def progress(self) -> dict[str, int]:
        return {
            "fragments": self._fragments,
            "samples": self._samples,
            "shards_finalized": len(self._claimed),
            # For an ETA: samples per shard, from the markers of the shards finalized so far.
            "shards_marked": len(self._markers),
            "samples_marked": sum(int(marker.get("samples", 0)) for marker in self._markers.values()),
        }


def make_tracker(committed: Mapping[str, tuple[Iterable[int], int | None]]) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raypipe.pipeline.faults import env_count

    # On the driver's node: losing a worker node must not lose the tracker (the job could not go on),
    # and losing the driver's node ends the job anyway.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(ShardTracker).options(scheduling_strategy=here)
    return actor.remote(committed, os.getpid(), env_count(KILL_AFTER_FRAGMENTS_ENV))


class FragmentSink(Datasink):
    """The job's Ray Data datasink: where a shard's results are committed and made into evidence.

    - :meth:`write` (each write task): groups its rows by shard and publishes one fragment per shard;
      the task whose fragment completes a shard (the tracker says so exactly once) finalizes it on the
      spot, so output shards appear while the job runs.
    - :meth:`on_write_complete` (the driver, once every write task is done): collects the markers of
      the shards finalized, then finishes what a lost write task left: a shard whose fragments cover
      every sample but that was not finalized, or finalized without reporting its marker. The result
      is :attr:`produced`, the marker (evidence as written) of every shard this run completed.

    A shard that is still incomplete after that is simply not in :attr:`produced`: the rerun redoes it.
    """

    def __init__(self, layout: OutputLayout, run: RunInfo, tracker: Any, shards: Mapping[str, str]) -> None:
        self.layout, self.run, self.tracker = layout, run, tracker
        self.shards = dict(shards)  # name -> input URI of every shard this run writes
        self.produced: dict[str, dict[str, Any]] = {}

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        import ray

        by_shard: dict[str, list[SampleTask]] = defaultdict(list)
        for block in blocks:
            for task in unpack_batch(block):
                by_shard[task.shard_name].append(task)
        finalized = []
        for shard, tasks in sorted(by_shard.items()):
            if ray.get(self.tracker.is_finalized.remote(shard)):
                continue  # a retried task's rows of a shard already finalized: nothing to add
            seqs, total = commit_fragment(self.layout, shard, tasks, self.run)
            if ray.get(self.tracker.commit.remote(shard, seqs, total)):
                marker = finalize_shard(
                    self.layout, shard, self.run.quarantine, self.run.fragment_key, tasks[0].source_uri
                )
                ray.get(self.tracker.finalized.remote(shard, marker))
                finalized.append(shard)
        return {
            "samples": sum(1 for ts in by_shard.values() for t in ts if not t.end_of_shard),
            "finalized": finalized,
        }

    def on_write_complete(self, write_result: Any) -> None:
        import ray

        self.produced = dict(ray.get(self.tracker.markers.remote()))
        leftovers = {name: uri for name, uri in self.shards.items() if name not in self.produced}
        if not leftovers:
            return
        finish = ray.remote(num_cpus=0.5)(complete_unfinalized)  # on a worker: finalize streams a whole shard
        finished: dict[str, dict[str, Any]] = ray.get(finish.remote(self.layout, leftovers, self.run))
        self.produced |= finished
        for name in leftovers:
            if name not in self.produced:
                marker = finalized_marker(self.layout, name, self.run.fragment_key)
                if marker is not None:
                    self.produced[name] = marker

    def get_name(self) -> str:
        return "WriteFragments"


def finalized_marker(layout: OutputLayout, shard: str, secret: bytes | None) -> dict[str, Any] | None:
    """The evidence of a shard finalized by a write task that died before reporting it; None if the
    shard has no marker, or one that does not check out (the next run redoes that shard)."""
    from raypipe.audit.manifest import ManifestError, entry_from_files
    from raypipe.io.publish import exists

    if not exists(layout.fs, layout.done(shard)):
        return None
    try:
        return entry_from_files(layout, shard, secret)
    except ManifestError as exc:
        log.error("%s: %s; it is left out of the manifest, and the next run redoes it", shard, exc)
        return None


def complete_unfinalized(layout: OutputLayout, shards: dict[str, str], run: RunInfo) -> dict[str, dict[str, Any]]:
    """Finalize every shard (name: input URI) whose fragments already cover all samples (after a
    crash); returns their completion markers."""
    from raypipe.pipeline.commit import committed_positions

    done = {}
    for shard, source in shards.items():
        seqs, total = committed_positions(layout, shard, secret=run.fragment_key)
        if is_complete(seqs, total):
            done[shard] = finalize_shard(layout, shard, run.quarantine, run.fragment_key, source)
    return done
