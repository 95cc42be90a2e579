"""Parquet shards: which columns are members, what the read stage makes of every row (and of a table it
cannot scan or parse), and what finalize writes back."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import LimitsConfig
from raypipe.io.identity import HashingWriter
from raypipe.io.spans import InputChangedError
from raypipe.io.storage import StorageOptions
from raypipe.io.tables import ParquetShardError, member_columns, write_rows
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.task import SampleTask
from raypipe.records import Status

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write(path: Path, table: pa.Table, **kwargs: object) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def tasks_of(path: Path, committed: Positions | None = None, **limits: int) -> list[SampleTask]:
    work = ShardWork(str(path), path.name, committed or Positions())
    return list(shard_tasks(work, StorageOptions(), LimitsConfig(**limits)))


def test_member_columns_are_top_level_binary_and_image_structs() -> None:
    schema = pa.schema(
        [
            ("jpg", pa.binary()),
            ("large", pa.large_binary()),
            ("view", pa.binary_view()),
            ("image", IMAGE),
            ("caption", pa.string()),
            ("meta", pa.struct([("width", pa.int32())])),
        ]
    )
    assert [(c.name, c.struct) for c in member_columns(schema)] == [
        ("jpg", False),
        ("large", False),
        ("view", False),
        ("image", True),
    ]
    for nested in (
        pa.list_(pa.binary()),
        pa.struct([("thumb", pa.binary()), ("w", pa.int32())]),
        pa.map_(pa.string(), pa.large_binary()),
        pa.dictionary(pa.int32(), pa.binary()),
        pa.large_list_view(pa.binary_view()),
    ):
        with pytest.raises(ParquetShardError, match=r"column 'frames' .* holds binary data inside a nested type"):
            member_columns(pa.schema([("frames", nested)]))


def test_every_row_is_a_task_keyed_by_its_position(tmp_path: Path) -> None:
    table = pa.table(
        {"jpg": [b"a", None, b"ccc", b"d"], "caption": ["x", "y", "z", "w"]},
    )
    path = write(tmp_path / "t.parquet", table, row_group_size=2)
    tasks = tasks_of(path, Positions([1]), max_member_bytes=2)  # row 1 committed by an earlier run
    rows, end = tasks[:-1], tasks[-1]
    assert [(t.seq, t.key, t.members) for t in rows] == [
        (0, "00000000", [("00000000.jpg", b"a")]),
        (2, "00000002", []),  # over the limit: not read
        (3, "00000003", [("00000003.jpg", b"d")]),
    ]
    assert rows[0].status is None and rows[2].status is None
    assert rows[1].status is not None and "column 'jpg' holds 3 bytes, over the limit of 2" in str(rows[1].error)
    assert end.end_of_shard and end.seq == 4
    assert json.loads(end.input_id)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # pinned


def test_a_table_raypipe_cannot_scan_or_parse_releases_nothing(tmp_path: Path) -> None:
    nested = pa.table({"frames": [[b"1"], [b"2"]], "id": [1, 2]})
    tasks = tasks_of(write(tmp_path / "nested.parquet", nested))
    assert [t.seq for t in tasks[:-1]] == [0, 1] and tasks[-1].seq == 2
    assert all(t.status is not None and "holds binary data inside a nested type" in str(t.error) for t in tasks[:-1])

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not a table")
    (task, end) = tasks_of(broken)
    assert task.status is not None and task.error_step == "read" and "not a readable Parquet file" in str(task.error)
    assert end.seq == 1


def test_written_rows_keep_schema_and_compression_and_never_the_input_bytes_of_a_member(tmp_path: Path) -> None:
    schema = pa.schema([("jpg", pa.binary()), ("n", pa.int64())], metadata={b"origin": b"test"})
    path = write(
        tmp_path / "t.parquet", pa.table({"jpg": [b"a", b"b"], "n": [1, 2]}, schema=schema), compression="zstd"
    )
    sink = io.BytesIO()
    written = write_rows(str(path), lambda seq: [] if seq == 0 else None, HashingWriter(sink))
    out = pq.ParquetFile(io.BytesIO(sink.getvalue()))
    assert written == 1 and out.schema_arrow == schema and out.schema_arrow.metadata == schema.metadata
    assert out.metadata.row_group(0).column(0).compression == "ZSTD"
    # select gave row 0 no member for jpg: it comes out null, never with its input bytes
    assert out.read().to_pylist() == [{"jpg": None, "n": 1}]


def test_finalize_refuses_a_table_that_changed_after_its_rows_were_read(tmp_path: Path) -> None:
    path = write(tmp_path / "t.parquet", pa.table({"jpg": [b"not an image"], "n": [1]}))
    layout = OutputLayout(str(tmp_path / "out"))
    tasks = tasks_of(path)
    for task in tasks[:-1]:  # released as compose releases a faceless sample
        task.status, task.out_members = Status.NO_FACE, list(task.members)
    commit_fragment(layout, path.name, tasks, RunInfo(config_hash="c" * 64, code_version="test", method={}))
    write(path, pa.table({"jpg": [b"not an image"], "n": [2]}))  # another value in a column raypipe copies
    with pytest.raises(InputChangedError, match="the input table is not the one its rows were read from"):
        finalize_shard(layout, path.name, source=str(path))
    assert not (tmp_path / "out" / "t.parquet").exists()
