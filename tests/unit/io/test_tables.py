"""Parquet shards: which columns are members, what the read stage makes of every row (and of a table it
cannot scan or parse), and what finalize writes back."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import LimitsConfig
from raypipe.io import tables
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
            ("meta", pa.struct([("width", pa.int32()), ("tags", pa.list_(pa.string()))])),
            ("clip", pa.list_(pa.float32())),  # a flat embedding is plain data
            ("uuid", pa.binary(16)),
        ]
    )
    assert [(c.name, c.struct) for c in member_columns(schema)] == [
        ("jpg", False),
        ("large", False),
        ("view", False),
        ("image", True),
    ]


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        (pa.list_(pa.binary()), "holds binary data inside a nested type"),
        (pa.struct([("thumb", pa.binary()), ("w", pa.int32())]), "holds binary data inside a nested type"),
        (pa.map_(pa.string(), pa.large_binary()), "holds binary data inside a nested type"),
        (pa.dictionary(pa.int32(), pa.binary()), "holds binary data inside a nested type"),
        (pa.large_list_view(pa.binary_view()), "is a type raypipe does not scan"),
        (pa.list_(pa.uint8()), "holds lists of 8-bit integers, which may be raw pixels"),
        (pa.list_(pa.list_(pa.float32())), "holds lists of lists of numbers, which may be raw pixels"),
        (pa.fixed_shape_tensor(pa.uint8(), [4, 4, 3]), "is the extension type 'arrow.fixed_shape_tensor'"),
        (pa.opaque(pa.binary(), "photo", "vendor"), "is the extension type 'arrow.opaque'"),
        (pa.binary(1024), "holds binary values of 1024 bytes"),
        (pa.sparse_union([pa.field("a", pa.int8())]), "is a type raypipe does not scan"),
    ],
)
def test_a_column_raypipe_cannot_scan_is_named(kind: pa.DataType, why: str) -> None:
    with pytest.raises(ParquetShardError, match=re.escape(f"column 'frames' ({kind}) {why}")):
        member_columns(pa.schema([("frames", kind), ("jpg", pa.binary())]))
    with pytest.raises(ParquetShardError, match=r"the column name\(s\) \['jpg'\] appear more than once"):
        member_columns(pa.schema([("jpg", pa.binary()), ("jpg", pa.binary())]))


def test_text_that_is_not_utf8_or_holds_a_picture_fails_its_row(tmp_path: Path) -> None:
    jpeg_start = b"\xff\xd8\xff\xe0" + bytes(range(256))
    uri = b"see data:image/png;base64,iVBORw0KGgoAAAANSUhEUg"
    captions = pa.array([b"a plain caption", jpeg_start, uri], pa.binary())
    table = pa.table(
        {
            "caption": captions.cast(pa.string(), safe=False),  # pyarrow does not check UTF-8 when it reads
            "tags": [["ok"], ["ok"], ["ok"]],
            "jpg": [b"x", b"y", b"z"],
        }
    )
    tags = pa.array([["ok"], ["fine", "/9j/4AAQSkZJRgABAQAAAQABAAD"], None], pa.list_(pa.string()))
    path = write(tmp_path / "t.parquet", table.set_column(1, "tags", tags))
    rows = tasks_of(path)[:-1]
    assert rows[0].status is None and all(t.status is not None for t in rows[1:])
    assert "column 'tags' holds a picture written as text" in str(rows[1].error)
    assert "column 'caption' holds text that is not UTF-8" in str(rows[1].error)
    assert rows[2].error == "column 'caption' holds a picture written as text (data URI or base64) at byte 4"

    image = pa.array([{"bytes": b"x", "path": uri.decode()}], IMAGE)  # an image struct's path is copied too
    rows = tasks_of(write(tmp_path / "p.parquet", pa.table({"image": image})))[:-1]
    assert rows[0].error == "column 'image.path' holds a picture written as text (data URI or base64) at byte 4"

    wide = pa.struct([("bytes", pa.binary()), ("path", pa.large_string())])
    paths = pa.array([b"a.jpg", b"\xff.jpg"], pa.large_binary()).cast(pa.large_string(), safe=False)
    image = pa.StructArray.from_arrays([pa.array([b"x", b"y"]), paths], fields=list(wide))
    rows = tasks_of(write(tmp_path / "w.parquet", pa.table({"image": image})))[:-1]
    assert rows[0].status is None and rows[1].error == "column 'image.path' holds text that is not UTF-8"

    hidden = pa.schema([("jpg", pa.binary())], metadata={b"cover": jpeg_start})
    path = write(tmp_path / "m.parquet", pa.table({"jpg": [b"x", b"y"]}, schema=hidden))
    rows = tasks_of(path)[:-1]
    assert all("the schema's metadata (b'cover') holds a picture's signature at byte 0" in str(t.error) for t in rows)
    tagged = pa.schema([pa.field("jpg", pa.binary(), metadata={b"preview": uri})])
    rows = tasks_of(write(tmp_path / "f.parquet", pa.table({"jpg": [b"x"]}, schema=tagged)))[:-1]
    assert "the metadata of column 'jpg' (b'preview') holds a picture written as text" in str(rows[0].error)


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
    written = write_rows(str(path), lambda seq: seq == 0, HashingWriter(sink), members=lambda seq: [])
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


def test_a_row_group_that_cannot_be_read_fails_its_own_rows_only(tmp_path: Path, monkeypatch) -> None:
    table = pa.table({"jpg": [bytes([i]) * 4000 for i in range(6)], "n": list(range(6))})
    path = write(tmp_path / "t.parquet", table, row_group_size=2, compression="zstd")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + 16] = b"\xff" * 16  # the first page header of rows 2-3
    path.write_bytes(bytes(data))
    tasks = tasks_of(path)
    assert [(t.key, t.status is None) for t in tasks[:-1]] == [
        ("00000000", True),
        ("00000001", True),
        ("00000002", False),
        ("00000003", False),
        ("00000004", True),
        ("00000005", True),
    ]
    assert "row group 1 cannot be read" in str(tasks[2].error) and tasks[-1].seq == 6

    assert tables.ROW_GROUP_FLOOR_BYTES == 256 * 2**20  # what the README says
    monkeypatch.setattr(tables, "ROW_GROUP_FLOOR_BYTES", 1000)  # as a small file that inflates a lot
    tasks = tasks_of(write(tmp_path / "big.parquet", table, row_group_size=3), max_member_bytes=100)
    assert all("row group" in str(t.error) and "bytes uncompressed, over the 1000" in str(t.error) for t in tasks[:-1])


def test_views_and_other_struct_fields_go_through_the_writer(tmp_path: Path) -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string()), ("width", pa.int32())])
    schema = pa.schema([("raw", pa.binary_view()), ("text", pa.string_view()), ("image", image)])
    values = {
        "raw": [b"a", b"b", None],
        "text": ["x", "y", "z"],
        "image": [{"bytes": b"p", "path": "p.jpg", "width": 4}, None, {"bytes": b"r", "path": None, "width": 5}],
    }
    path = write(tmp_path / "t.parquet", pa.table(values, schema=schema), compression="lz4")
    out = {0: [("00000000.raw", b"A"), ("00000000.image", b"P")], 2: [("00000002.image", b"R")]}
    sink = io.BytesIO()
    assert write_rows(str(path), out.__contains__, HashingWriter(sink), members=out.__getitem__) == 2
    written = pq.ParquetFile(io.BytesIO(sink.getvalue()))
    codec = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
    assert written.schema_arrow == schema and written.metadata.row_group(0).column(0).compression == codec
    assert written.read().to_pylist() == [
        {"raw": b"A", "text": "x", "image": {"bytes": b"P", "path": "p.jpg", "width": 4}},
        {"raw": None, "text": "z", "image": {"bytes": b"R", "path": None, "width": 5}},
    ]


@pytest.mark.parametrize("content", [b"not parquet at all", None])
def test_a_table_that_releases_nothing_is_finalized_with_no_rows(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "t.parquet"
    if content is None:  # a table raypipe refuses to scan
        write(path, pa.table({"frames": [[b"1"], [b"2"]], "id": [1, 2]}))
    else:
        path.write_bytes(content)
    layout = OutputLayout(str(tmp_path / "out"))
    tasks = tasks_of(path)
    assert all(t.status is Status.FAILED for t in tasks[:-1])
    commit_fragment(layout, path.name, tasks, RunInfo(config_hash="c" * 64, code_version="test", method={}))
    marker = finalize_shard(layout, path.name, source=str(path))
    written = pq.read_table(tmp_path / "out" / "t.parquet")
    assert marker["released"] == 0 and written.num_rows == 0
    assert written.column_names == ([] if content else ["frames", "id"])


def test_a_dictionary_column_keeps_no_value_of_a_row_left_out(tmp_path: Path) -> None:
    uri = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
    captions = pa.array(["ok", uri]).dictionary_encode()  # as pandas writes a category column
    nested = pa.array([["a"], [uri]], pa.list_(pa.dictionary(pa.int32(), pa.string())))
    path = write(tmp_path / "t.parquet", pa.table({"jpg": [b"x", b"y"], "caption": captions, "tags": nested}))
    tasks = tasks_of(path)
    assert tasks[0].status is None and "holds a picture written as text" in str(tasks[1].error)
    sink = io.BytesIO()
    write_rows(str(path), lambda seq: seq == 0, HashingWriter(sink), members=lambda seq: [("00000000.jpg", b"x")])
    assert b"iVBOR" not in sink.getvalue()  # not in a dictionary page either
    assert pq.read_table(io.BytesIO(sink.getvalue())).to_pylist() == [{"jpg": b"x", "caption": "ok", "tags": ["a"]}]


def test_a_picture_in_a_nested_fields_metadata_or_a_name_refuses_the_table(tmp_path: Path) -> None:
    uri = b"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
    inner = pa.field("who", pa.string(), metadata={b"thumb": uri})
    schema = pa.schema([("jpg", pa.binary()), ("info", pa.struct([inner]))])
    path = write(tmp_path / "t.parquet", pa.table({"jpg": [b"x"], "info": [{"who": "a"}]}, schema=schema))
    assert "the metadata of column 'info.who' (b'thumb') holds a picture" in str(tasks_of(path)[0].error)
    named = pa.table({"jpg": [b"x"], uri.decode(): ["a"]})
    assert "the name of column 'data:image/png" in str(tasks_of(write(tmp_path / "n.parquet", named))[0].error)


def test_a_prompt_column_is_read_value_by_value(tmp_path: Path) -> None:
    prompts = pa.array([b"an elderly man", b"\xff\xfe", None], pa.binary()).cast(pa.string(), safe=False)
    table = pa.table({"jpg": [b"x", b"y", b"z"], "prompt": prompts.dictionary_encode()})
    path = write(tmp_path / "t.parquet", table)
    work = ShardWork(str(path), path.name, attribute_column="prompt")
    texts = [t.attribute_column for t in shard_tasks(work, StorageOptions(), LimitsConfig())][:-1]
    assert texts == [("an elderly man", ""), (None, "column 'prompt' holds text that is not UTF-8"), (None, "")]
