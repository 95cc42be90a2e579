"""Read stage: a Ray Data datasource with one read task per input shard.

raypipe reads tars with its own streaming reader (:mod:`raypipe.io.tars`) rather than
``read_webdataset``: it keeps every member's exact name and order (output shards must hold the same
members in the same order), never decodes a member, and turns links, unsafe names and damaged tars
into audit records instead of crashing the job. Samples already committed by an earlier run are
skipped here, so resumed work is never recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raypipe.audit.schema import sample_digest
from raypipe.config import LimitsConfig
from raypipe.io.storage import StorageOptions, filesystem, redact
from raypipe.io.tars import Sample, TarProblem, TarReadError, iter_samples
from raypipe.logs import get_logger
from raypipe.pipeline.task import SampleTask, pack_batch
from raypipe.records import Status

log = get_logger(__name__)

ROWS_PER_BLOCK = 16


@dataclass(frozen=True)
class ShardWork:
    """A shard still to be processed, and the sample positions already committed in it."""

    uri: str
    name: str
    committed: frozenset[int] = field(default_factory=frozenset)


def shard_tasks(work: ShardWork, options: StorageOptions, limits: LimitsConfig) -> Iterator[SampleTask]:
    """Every sample of a shard as a task (committed ones skipped), then the end-of-shard marker."""
    from raypipe.io.retry import retry

    fs, path = filesystem(work.uri, options)
    source = redact(work.uri)
    seq = 0
    with retry(lambda: fs.open(path, "rb")) as fh:
        try:
            for item in iter_samples(fh, source=source):
                if seq not in work.committed:
                    yield _task(work, seq, item, limits)
                seq += 1
        except TarReadError as exc:
            if seq not in work.committed:
                pending = exc.pending
                task = SampleTask(
                    shard=source,
                    shard_name=work.name,
                    seq=seq,
                    key=pending.key if pending else "",
                    members=[],
                    input_sha256=sample_digest(pending.members) if pending else "",
                )
                task.fail("read", str(exc))
                yield task
            seq += 1
    yield SampleTask.end_marker(source, work.name, seq)


def _task(work: ShardWork, seq: int, item: Sample | TarProblem, limits: LimitsConfig) -> SampleTask:
    source = redact(work.uri)
    if isinstance(item, TarProblem):
        task = SampleTask(shard=source, shard_name=work.name, seq=seq, key=item.key, members=[], input_sha256="")
        task.fail("read", f"member {item.member_name!r} not read: {item.reason}")
        return task
    task = SampleTask(
        shard=source,
        shard_name=work.name,
        seq=seq,
        key=item.key,
        members=list(item.members),
        input_sha256=sample_digest(item.members),
    )
    for name, data in item.members:
        if len(data) > limits.max_member_bytes:
            task.fail(
                "read",
                f"member {name!r} is {len(data)} bytes, over limits.max_member_bytes={limits.max_member_bytes}",
            )
            break
    if task.status is not Status.FAILED:
        names = [name for name, _ in item.members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            task.fail("read", f"duplicate member names in one sample: {duplicates}")
    return task


def make_datasource(shards: list[ShardWork], options: StorageOptions, limits: LimitsConfig) -> Any:
    """A Ray Data datasource over ``shards``: one read task per shard, blocks of packed tasks."""
    import pyarrow as pa
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read_shard(work: ShardWork) -> Iterator[pa.Table]:
        batch: list[SampleTask] = []
        for task in shard_tasks(work, options, limits):
            batch.append(task)
            if len(batch) >= ROWS_PER_BLOCK:
                yield pa.table(pack_batch(batch))
                batch = []
        if batch:
            yield pa.table(pack_batch(batch))

    class ShardDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            return [
                ReadTask(
                    (lambda w=work: read_shard(w)),
                    BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[redact(work.uri)]),
                )
                for work in shards
            ]

        def get_name(self) -> str:
            return "ReadShards"

    return ShardDatasource()
