"""The job's Ray Data datasource: one read task per pending shard, blocks of packed sample tasks.

What a read task does is :func:`raypipe.pipeline.read.shard_tasks` (Ray-free); this module only hands
it to Ray Data.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raypipe.config import LimitsConfig
from raypipe.io.storage import StorageOptions, redact
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.task import SampleTask, pack_batch

ROWS_PER_BLOCK = 16


def read_shard(work: ShardWork, options: StorageOptions, limits: LimitsConfig) -> Iterator[pa.Table]:
    """One read task: the shard's tasks in blocks of ``ROWS_PER_BLOCK`` packed rows."""
    batch: list[SampleTask] = []
    for task in shard_tasks(work, options, limits):
        batch.append(task)
        if len(batch) >= ROWS_PER_BLOCK:
            yield pa.table(pack_batch(batch))
            batch = []
    if batch:
        yield pa.table(pack_batch(batch))


class ShardDatasource(Datasource):
    """The job's Ray Data datasource: one read task per pending shard (:func:`read_shard`)."""

    def __init__(self, shards: list[ShardWork], options: StorageOptions, limits: LimitsConfig) -> None:
        self.shards, self.options, self.limits = shards, options, limits

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown before reading: members are never decoded here

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        return [
            ReadTask(
                functools.partial(read_shard, work, self.options, self.limits),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(redact(work.uri),)),
            )
            for work in self.shards
        ]

    def get_name(self) -> str:
        return "ReadShards"
