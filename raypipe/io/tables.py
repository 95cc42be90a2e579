"""Parquet shards: a table whose rows are samples and whose binary columns hold their pictures.

A Parquet input (Hugging Face datasets, img2dataset's parquet output, LAION-style tables) is read as a
shard of the same name:

- row ``n`` is the sample with key ``f"{n:08d}"`` (:func:`row_key`): its position, which is what ties an
  audit record to its row;
- the sample's members are the values of the table's *member columns*: every top-level ``binary``
  column and every Hugging Face image struct (``{bytes: binary, path: string}``), each named
  ``<key>.<column>`` (:func:`member_name`); a null value is no member. They are scanned like any tar
  member: a picture (by extension or content) is decoded and searched for faces;
- a table that holds binary data anywhere else (inside a list, a map or another struct) cannot be
  scanned, and none of its rows is released;
- an image struct whose ``bytes`` is null but whose ``path`` is set points at a file outside the table:
  raypipe never sees that picture, so the row is not released.

Every other column (strings, numbers, lists) is neither decoded nor scanned: :func:`write_rows` copies
it from the input, with the row order and the schema (its metadata included). The output holds the
rows that were released, with their member columns replaced by the output members; a row that is not
released is left out. Reading spools the input to a local file while hashing it (:func:`spool`), so
the whole file is read once and then parsed a row group at a time.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.io.identity import HashingReader

PARQUET_SUFFIX = ".parquet"
KEY_DIGITS = 8
BATCH_ROWS = 64  # rows parsed at a time while reading (member columns only)
_COPY_CHUNK = 8 * 2**20
QUARANTINE_COLUMN = "raypipe_quarantine"  # why each row of a quarantine table was held back (JSON)


class ParquetShardError(ValueError):
    """A Parquet shard cannot be read or written as raypipe reads tables; the message says why."""


@dataclass(frozen=True)
class MemberColumn:
    """A column whose values are members: raw bytes, or the ``bytes`` field of an image struct."""

    name: str
    struct: bool = False


@dataclass
class Row:
    """One input row as a sample: its members and why any value of it cannot be released."""

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def is_table_shard(name: str) -> bool:
    """Whether a shard (by name) is a Parquet table rather than a tar."""
    return name.endswith(PARQUET_SUFFIX)


def row_key(position: int) -> str:
    return f"{position:0{KEY_DIGITS}d}"


def member_name(key: str, column: str) -> str:
    return f"{key}.{column}"


def column_of(key: str, name: str) -> str:
    """The column a member named ``<key>.<column>`` came from."""
    return name[len(key) + 1 :]


def member_columns(schema: pa.Schema) -> list[MemberColumn]:
    """The member columns of a table, in schema order. Raises :class:`ParquetShardError` when binary data
    lies anywhere raypipe does not scan (inside a list, a map or a struct that is not an image)."""
    found = []
    for column in schema:
        if _is_binary(column.type):
            found.append(MemberColumn(column.name))
        elif _is_image_struct(column.type):
            found.append(MemberColumn(column.name, struct=True))
        elif _holds_binary(column.type):
            raise ParquetShardError(
                f"column {column.name!r} ({column.type}) holds binary data inside a nested type; raypipe scans "
                "top-level binary columns and image structs {bytes, path} only, so no row of this table is released"
            )
    return found


def _is_binary(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )


def _is_image_struct(kind: pa.DataType) -> bool:
    if not pa.types.is_struct(kind):
        return False
    names = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
    if "bytes" not in names or not _is_binary(names["bytes"]):
        return False
    return not any(_holds_binary(t) for name, t in names.items() if name != "bytes")


def _holds_binary(kind: pa.DataType) -> bool:
    if _is_binary(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_holds_binary(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _holds_binary(kind.key_type) or _holds_binary(kind.item_type)
    if any(
        check(kind)
        for check in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_list_view)
    ) or pa.types.is_large_list_view(kind):
        return _holds_binary(kind.value_type)
    if pa.types.is_dictionary(kind):
        return _holds_binary(kind.value_type)
    if pa.types.is_union(kind):
        return any(_holds_binary(kind.field(i).type) for i in range(kind.num_fields))
    return False


def spool(handle: IO[bytes], folder: str, name: str = "table.parquet") -> tuple[str, str]:
    """Copy a stream into ``folder`` while hashing it; returns (local path, sha256 hex)."""
    local = os.path.join(folder, name)
    reader = HashingReader(handle)
    with open(local, "wb") as copy:
        shutil.copyfileobj(reader, copy, _COPY_CHUNK)  # type: ignore[misc]  # read() is all it needs
    return local, reader.digest.hexdigest()


def open_table(local: str) -> pq.ParquetFile:
    """A local Parquet file, with any failure to parse its footer as :class:`ParquetShardError`."""
    try:
        return pq.ParquetFile(local)
    except (pa.ArrowException, OSError) as exc:
        raise ParquetShardError(f"not a readable Parquet file ({exc})") from None


def iter_rows(local: str, max_member_bytes: int | None = None) -> Iterator[Row]:
    """Every row of a local Parquet file as a :class:`Row`, in order, parsing one batch at a time.

    Raises :class:`ParquetShardError` when the file is not Parquet or a row group cannot be read; the
    rows yielded before it are complete. A table with binary data that cannot be scanned yields every
    row with that problem (so every row gets its audit record, and none is released).
    """
    table = open_table(local)
    rows = table.metadata.num_rows
    try:
        columns = member_columns(table.schema_arrow)
    except ParquetShardError as exc:
        for position in range(rows):
            yield Row(row_key(position), problems=[str(exc)])
        return
    if not columns:
        for position in range(rows):
            yield Row(row_key(position))
        return
    position = 0
    batches = table.iter_batches(batch_size=BATCH_ROWS, columns=[c.name for c in columns], use_threads=False)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise ParquetShardError(f"row {position} and after cannot be read ({exc})") from None
        values = [batch.column(i).to_pylist() for i in range(len(columns))]
        for offset in range(batch.num_rows):
            yield _row(position, columns, [column[offset] for column in values], max_member_bytes)
            position += 1


def _row(position: int, columns: Sequence[MemberColumn], values: Sequence[Any], limit: int | None) -> Row:
    row = Row(row_key(position))
    for column, value in zip(columns, values):
        data = value
        if column.struct and value is not None:
            data = value.get("bytes")
            if data is None and value.get("path"):
                row.problems.append(
                    f"column {column.name!r} refers to a picture by path ({str(value['path'])[:200]!r}) and holds no "
                    "bytes: raypipe anonymizes only pictures the table holds"
                )
                continue
        if data is None:
            continue
        if limit is not None and len(data) > limit:
            row.problems.append(
                f"column {column.name!r} holds {len(data)} bytes, over the limit of {limit} (limits.max_member_bytes)"
            )
            continue
        row.members.append((member_name(row.key, column.name), bytes(data)))
    return row


def write_rows(
    local: str,
    select: Callable[[int], Sequence[tuple[str, bytes]] | None],
    sink: Any,
    note: Callable[[int], str] | None = None,
) -> int:
    """Write the rows of the local Parquet file ``local`` that ``select`` keeps to ``sink`` (a writable
    stream); returns how many. One input row group is held at a time.

    ``select(position)`` gives a row's output members (named ``<key>.<column>``), or None to leave the
    row out; in a row kept, a member column without an output member is null (its input value is never
    released unless ``select`` gives it). The schema, its metadata
    and the row order are the input's; the compression is that of the input's first column chunk.
    With ``note``, a string column ``raypipe_quarantine`` holds ``note(position)`` for every row.
    """
    table = open_table(local)
    schema = table.schema_arrow
    columns = member_columns(schema)
    out_schema = schema.append(pa.field(QUARANTINE_COLUMN, pa.string())) if note is not None else schema
    written, start = 0, 0
    with pq.ParquetWriter(_Stream(sink), out_schema, compression=_compression(table)) as writer:
        for group in range(table.num_row_groups):
            chunk = table.read_row_group(group, use_threads=False)
            kept: list[int] = []
            outputs: list[dict[str, bytes]] = []
            for offset in range(chunk.num_rows):
                members = select(start + offset)
                if members is not None:
                    key = row_key(start + offset)
                    kept.append(offset)
                    outputs.append({column_of(key, name): data for name, data in members})
            chunk = chunk.take(pa.array(kept, pa.int64()))
            for column in columns:
                index = chunk.schema.get_field_index(column.name)
                values = _replaced(chunk.column(index).to_pylist(), column, outputs)
                chunk = chunk.set_column(index, schema.field(index), pa.array(values, schema.field(index).type))
            if note is not None:
                chunk = chunk.append_column(
                    out_schema.field(QUARANTINE_COLUMN), pa.array([note(start + i) for i in kept], pa.string())
                )
            if chunk.num_rows:
                writer.write_table(chunk.replace_schema_metadata(out_schema.metadata))
            written += chunk.num_rows
            start += table.metadata.row_group(group).num_rows
    return written


class _Stream(io.RawIOBase):
    """A write-only stream over anything with ``write`` (pyarrow wants a file object); closing it
    leaves the target open, for its owner to complete."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self._target, self._position = target, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = bytes(data)
        self._target.write(written)
        self._position += len(written)
        return len(written)

    def tell(self) -> int:
        return self._position


def _replaced(values: list[Any], column: MemberColumn, outputs: list[dict[str, bytes]]) -> list[Any]:
    result: list[Any] = []
    for value, output in zip(values, outputs):
        data = output.get(column.name)
        if column.struct:
            result.append(None if value is None and data is None else {**(value or {}), "bytes": data})
        else:
            result.append(data)
    return result


def _compression(table: pq.ParquetFile) -> str:
    if table.num_row_groups == 0 or table.metadata.num_columns == 0:
        return "snappy"
    codec = str(table.metadata.row_group(0).column(0).compression).lower()
    return codec if codec in {"snappy", "gzip", "brotli", "zstd", "lz4", "none"} else "snappy"


def released_members(handle: IO[bytes]) -> Iterator[list[tuple[str, bytes]]]:
    """The members of every row of an output table, in order, as ``(column, bytes)``: what a verifier
    names with the key of the released sample at that position. Raises :class:`ParquetShardError`."""
    try:
        table = pq.ParquetFile(handle)
        columns = member_columns(table.schema_arrow)
        if not columns:
            for _ in range(table.metadata.num_rows):
                yield []
            return
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=[c.name for c in columns], use_threads=False):
            values = [batch.column(i).to_pylist() for i in range(len(columns))]
            for offset in range(batch.num_rows):
                row = []
                for column, column_values in zip(columns, values):
                    value = column_values[offset]
                    data = value.get("bytes") if column.struct and value is not None else value
                    if data is not None:
                        row.append((column.name, bytes(data)))
                yield row
    except (pa.ArrowException, OSError) as exc:
        raise ParquetShardError(f"not a readable Parquet file ({exc})") from None
