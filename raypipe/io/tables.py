"""Parquet shards: a table whose rows are samples and whose binary columns hold their pictures.

A Parquet input (Hugging Face datasets, img2dataset's parquet output, LAION-style tables) is read as a
shard of the same name:

- row ``n`` is the sample with key ``f"{n:08d}"`` (:func:`row_key`): its position, which is what ties an
  audit record to its row;
- the sample's members are the values of the table's *member columns*: every top-level ``binary``
  column and every Hugging Face image struct (``{bytes: binary, path: string}``), each named
  ``<key>.<column>`` (:func:`member_name`); a null value is no member. They are scanned like any tar
  member: a picture (by extension or content) is decoded and searched for faces;
- every other column must be *plain* data, which is copied as it is: numbers, booleans, dates and
  times, text, fixed-size binary of at most :data:`PLAIN_FIXED_BYTES` bytes (UUIDs, hashes), and lists,
  structs and maps of those. Text is scanned too (``scan_text``): a value that is not UTF-8, or that
  holds a picture or a base64 picture, fails its row;
- a table with anything else (binary inside a nested type, extension types such as tensors, unions,
  lists of 8-bit integers or lists of lists of numbers, which may be raw pixels, repeated column or
  field names), or whose schema metadata holds a picture, cannot be scanned: none of its rows is
  released;
- an image struct whose ``bytes`` is null but whose ``path`` is set points at a file outside the table:
  raypipe never sees that picture, so the row is not released.

Rows are read one row group at a time, all columns; a row group that cannot be read, or that is over
the size limit by its footer, fails its own rows and no others. :func:`write_rows` copies the plain
columns from the input with the row order and the schema (its metadata included) and writes the
member columns from the output members; a row that is not released is left out. Reading spools the
input to a local file while hashing it (:func:`spool`), so the whole file is read once and then
parsed from local disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypipe.io.identity import HashingReader
from raypipe.io.retry import retry

PARQUET_SUFFIX = ".parquet"
KEY_DIGITS = 8
PLAIN_FIXED_BYTES = 64  # fixed-size binary up to this width is plain data (UUIDs, hashes): never a picture
QUARANTINE_COLUMN = "raypipe_quarantine"  # why each row of a quarantine table was held back (JSON)
_COPY_CHUNK = 8 * 2**20
# A row group is read whole; one whose footer says it holds more than this many bytes uncompressed, or
# 4 x limits.max_member_bytes if that is more, fails its rows unread (a small file may inflate a lot).
ROW_GROUP_FLOOR_BYTES = 256 * 2**20
_CODECS = {"snappy": "snappy", "gzip": "gzip", "brotli": "brotli", "zstd": "zstd", "lz4": "lz4", "lz4_raw": "lz4"}

ScanText = Callable[[bytes], "str | None"]  # what a text value holds that must not be released, if anything


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
    text: tuple[str | None, str] = (None, "")  # the value of ``text_column`` (see iter_rows), and why not


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


# ------------------------------------------------------------------------------------------ schema


def member_columns(schema: pa.Schema, strict: bool = True) -> list[MemberColumn]:
    """The member columns of a table, in schema order, after checking every other column is plain.
    Raises :class:`ParquetShardError` naming the first column raypipe cannot scan. ``strict=False``
    only finds them (for a table raypipe wrote, or the held-back rows of one it refused)."""
    names = [column.name for column in schema]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated and strict:
        raise ParquetShardError(f"the column name(s) {repeated} appear more than once")
    found = []
    for column in schema:
        if column.name in repeated:
            continue
        if _is_member_binary(column.type):
            found.append(MemberColumn(column.name))
        elif _is_image_struct(column.type):
            found.append(MemberColumn(column.name, struct=True))
        elif strict:
            why = _not_plain(column.type, top=True)
            if why:
                raise ParquetShardError(
                    f"column {column.name!r} ({column.type}) {why}; raypipe scans top-level binary columns and image "
                    "structs {bytes, path} and copies plain data only, so no row of this table is released"
                )
    return found


def _is_member_binary(kind: pa.DataType) -> bool:
    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind))


def _is_image_struct(kind: pa.DataType) -> bool:
    if not pa.types.is_struct(kind):
        return False
    fields = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
    if len(fields) != kind.num_fields or "bytes" not in fields:
        return False
    if not (pa.types.is_binary(fields["bytes"]) or pa.types.is_large_binary(fields["bytes"])):
        return False
    return all(not _not_plain(t) for name, t in fields.items() if name != "bytes")


def _not_plain(kind: pa.DataType, top: bool = False, in_list: bool = False) -> str | None:
    """Why a type is not plain data (None: it is)."""
    types = pa.types
    if isinstance(kind, pa.BaseExtensionType):
        return f"is the extension type {kind.extension_name!r}, which may hold pictures"
    if types.is_null(kind) or types.is_boolean(kind) or types.is_decimal(kind) or types.is_temporal(kind):
        return None
    if types.is_integer(kind) or types.is_floating(kind):
        if in_list and kind.bit_width == 8:
            return "holds lists of 8-bit integers, which may be raw pixels"
        return None
    if types.is_string(kind) or types.is_large_string(kind) or (top and types.is_string_view(kind)):
        return None
    if types.is_fixed_size_binary(kind):
        return None if kind.byte_width <= PLAIN_FIXED_BYTES else f"holds binary values of {kind.byte_width} bytes"
    if types.is_binary(kind) or types.is_large_binary(kind) or types.is_binary_view(kind):
        return "holds binary data inside a nested type"
    if types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind):
        element = kind.value_type
        if in_list and (types.is_integer(element) or types.is_floating(element)):
            return "holds lists of lists of numbers, which may be raw pixels"
        return _not_plain(element, in_list=True)
    if types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        if len(set(names)) != len(names):
            return "has repeated field names"
        return next((why for i in range(kind.num_fields) if (why := _not_plain(kind.field(i).type))), None)
    if types.is_map(kind):
        return _not_plain(kind.key_type) or _not_plain(kind.item_type)
    if types.is_dictionary(kind):
        return _not_plain(kind.value_type, top=top, in_list=in_list)
    return "is a type raypipe does not scan"


def _has_text(kind: pa.DataType) -> bool:
    types = pa.types
    if types.is_string(kind) or types.is_large_string(kind) or types.is_string_view(kind):
        return True
    if types.is_dictionary(kind):
        return _has_text(kind.value_type)
    if types.is_map(kind):
        return _has_text(kind.key_type) or _has_text(kind.item_type)
    return any(_has_text(kind.field(i).type) for i in range(kind.num_fields))


def metadata_problem(schema: pa.Schema, scan_text: ScanText | None) -> str | None:
    """What the schema's metadata, a field's (at any depth) or a name holds that must not be released
    (a picture), if anything."""
    if scan_text is None:
        return None
    where = [("the schema's metadata", schema.metadata)]
    for path, one in _all_fields(schema):
        found = scan_text(one.name.encode("utf-8", "replace"))
        if found:
            return f"the name of column {path[:80]!r} {found}"
        where.append((f"the metadata of column {path!r}", one.metadata))
    for place, metadata in where:
        for key, value in (metadata or {}).items():
            found = scan_text(key) or scan_text(value)
            if found:
                return f"{place} ({key[:40]!r}) {found}"
    return None


def scan_plan(schema: pa.Schema, scan_text: ScanText | None) -> tuple[list[MemberColumn], str | None]:
    """A table's member columns, and why none of its rows may be released (None: they may)."""
    try:
        return member_columns(schema), metadata_problem(schema, scan_text)
    except ParquetShardError as exc:
        return [], str(exc)


def _all_fields(schema: pa.Schema) -> Iterator[tuple[str, pa.Field]]:
    """Every field of a schema with its dotted path, nested ones too (struct, list, map children)."""
    stack = [(one.name, one) for one in schema]
    while stack:
        path, one = stack.pop(0)
        yield path, one
        kind = one.type
        if pa.types.is_dictionary(kind):
            continue
        stack += [(f"{path}.{kind.field(i).name}", kind.field(i)) for i in range(kind.num_fields)]


# ------------------------------------------------------------------------------------------- read


def spool(handle: IO[bytes], folder: str, name: str = "table.parquet") -> tuple[str, str]:
    """Copy a stream into ``folder`` while hashing it; returns (local path, sha256 hex)."""
    local = os.path.join(folder, name)
    reader = HashingReader(handle)
    with open(local, "wb") as copy:
        shutil.copyfileobj(reader, copy, _COPY_CHUNK)  # type: ignore[misc]  # read() is all it needs
    return local, reader.digest.hexdigest()


@contextlib.contextmanager
def spooled(fs: Any, path: str, description: str) -> Iterator[tuple[str, str]]:
    """A local copy of the table at ``path`` (opened with retries) for the block: (local path, sha256)."""
    with tempfile.TemporaryDirectory(prefix="raypipe-table-") as folder:
        with retry(lambda: fs.open(path, "rb"), description=description) as handle:
            copied = spool(handle, folder)
        yield copied


def open_table(local: str) -> pq.ParquetFile:
    """A local Parquet file, with any failure to parse its footer as :class:`ParquetShardError`."""
    try:
        return pq.ParquetFile(local)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParquetShardError(f"not a readable Parquet file ({exc})") from None


def iter_rows(
    local: str, max_member_bytes: int | None = None, scan_text: ScanText | None = None, text_column: str | None = None
) -> Iterator[Row]:
    """Every row of a local Parquet file as a :class:`Row`, in order, one row group at a time.

    Raises :class:`ParquetShardError` only when the file is not Parquet at all. A table raypipe cannot
    scan yields every row with that problem (so every row gets its audit record, and none is
    released); so does a row group that cannot be read, or whose footer says it holds more uncompressed
    than :data:`ROW_GROUP_FLOOR_BYTES` or ``4 * max_member_bytes``, whichever is more, for its own rows.
    With ``text_column``, every row's ``text`` is that string column's value, or why there is none.
    """
    table = open_table(local)  # here, not in the generator: a file that is not Parquet raises at the call
    return _rows(table, max_member_bytes, scan_text, text_column)


def _rows(
    table: pq.ParquetFile, max_member_bytes: int | None, scan_text: ScanText | None, text_column: str | None
) -> Iterator[Row]:
    meta = table.metadata
    columns, refusal = scan_plan(table.schema_arrow, scan_text)
    position = 0
    for group in range(meta.num_row_groups):
        count = meta.row_group(group).num_rows
        if refusal is None:
            rows, read = _group_rows(table, group, position, columns, max_member_bytes, scan_text)
            if read and text_column is not None:
                _add_text(rows, table, group, text_column)
        else:
            rows = [Row(row_key(position + i), problems=[refusal]) for i in range(count)]
        yield from rows
        position += count


def _group_rows(
    table: pq.ParquetFile,
    group: int,
    start: int,
    columns: list[MemberColumn],
    limit: int | None,
    scan_text: ScanText | None,
) -> tuple[list[Row], bool]:
    """The rows of one row group, and whether it was read (False: every row fails, saying why)."""
    count = table.metadata.row_group(group).num_rows
    size = table.metadata.row_group(group).total_byte_size
    most = max(ROW_GROUP_FLOOR_BYTES, 4 * (limit or 0))
    if size > most:
        why = f"row group {group} holds {size} bytes uncompressed, over the {most} a row group may hold"
        return [Row(row_key(start + i), problems=[why]) for i in range(count)], False
    try:
        chunk = table.read_row_group(group, use_threads=False)
        rows = [Row(row_key(start + i)) for i in range(chunk.num_rows)]
        for column in columns:
            _add_members(rows, chunk, column, limit)
        if scan_text is not None:
            _scan_texts(rows, chunk, columns, scan_text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = f"row group {group} cannot be read ({str(exc)[:300]})"
        return [Row(row_key(start + i), problems=[why]) for i in range(count)], False
    return rows, True


def _add_text(rows: list[Row], table: pq.ParquetFile, group: int, name: str) -> None:
    """Every row's value of the text column ``name`` (each decoded alone: one bad value fails its row)."""
    schema = table.schema_arrow
    index = schema.get_field_index(name)
    kind = _through(schema.field(index).type) if index >= 0 else None
    if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        why = f"the table has no column {name!r}" if kind is None else f"column {name!r} is {kind}, not a string column"
        for row in rows:
            row.text = (None, why)
        return
    try:
        column = table.read_row_group(group, columns=[name], use_threads=False).column(0)
        values = column.cast(kind).cast(pa.large_binary()).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        for row in rows:
            row.text = (None, f"column {name!r} cannot be read ({str(exc)[:200]})")
        return
    for row, value in zip(rows, values):
        try:
            row.text = (None if value is None else bytes(value).decode("utf-8"), "")
        except UnicodeDecodeError:
            row.text = (None, f"column {name!r} holds text that is not UTF-8")


def _member_values(chunk: pa.Table, column: MemberColumn) -> tuple[list[Any], list[Any]]:
    """(bytes or None, path or None) per row of a member column; paths as bytes, never decoded."""
    array = chunk.column(column.name)
    if not column.struct:
        return array.to_pylist(), [None] * len(array)
    data = pc.struct_field(array, "bytes").to_pylist()
    if array.type.get_field_index("path") < 0:
        return data, [None] * len(array)
    paths = pc.struct_field(array, "path")
    plain = _through(paths.type)
    if pa.types.is_string(plain) or pa.types.is_large_string(plain):  # as bytes: a bad path is never decoded
        return data, paths.cast(plain).cast(pa.large_binary()).to_pylist()
    return data, paths.to_pylist()


def _add_members(rows: list[Row], chunk: pa.Table, column: MemberColumn, limit: int | None) -> None:
    data, paths = _member_values(chunk, column)
    for row, value, path in zip(rows, data, paths):
        if value is None:
            if path:
                shown = bytes(path)[:200].decode("utf-8", "replace") if isinstance(path, bytes) else str(path)[:200]
                row.problems.append(
                    f"column {column.name!r} refers to a picture by path ({shown!r}) and holds no bytes: raypipe "
                    "anonymizes only pictures the table holds"
                )
        elif limit is not None and len(value) > limit:
            row.problems.append(
                f"column {column.name!r} holds {len(value)} bytes, over the limit of {limit} (limits.max_member_bytes)"
            )
        else:
            row.members.append((member_name(row.key, column.name), bytes(value)))


def _scan_texts(rows: list[Row], chunk: pa.Table, columns: list[MemberColumn], scan_text: ScanText) -> None:
    """Fail every row whose text (in any plain column, at any depth) is not UTF-8 or holds a picture."""
    structs = {c.name for c in columns if c.struct}
    texts = [(name, chunk.column(name)) for name in chunk.column_names if name not in {c.name for c in columns}]
    for name in structs:  # an image struct's other fields (its path) are copied too
        array = chunk.column(name)
        texts += [
            (f"{name}.{array.type.field(i).name}", pc.struct_field(array, i))
            for i in range(array.type.num_fields)
            if array.type.field(i).name != "bytes"
        ]
    for name, array in texts:
        if not _has_text(array.type):
            continue
        whole = _valid_values(array)  # the column at once; value by value only where it is not UTF-8
        for position, row in enumerate(rows):
            one = [whole[position]] if whole is not None else _valid_values(array.slice(position, 1))
            if one is None:
                row.problems.append(f"column {name!r} holds text that is not UTF-8")
                continue
            values = one[0]
            found = next(filter(None, (scan_text(text.encode()) for text in _texts(values))), None)
            if found:
                row.problems.append(f"column {name!r} {found}")


def _valid_values(array: pa.ChunkedArray) -> list[Any] | None:
    """The values of a column as Python objects, or None when some text in it is not valid UTF-8."""
    try:
        for chunk in array.chunks:
            chunk.validate(full=True)
        return array.to_pylist()
    except (pa.ArrowException, ValueError):
        return None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


# ------------------------------------------------------------------------------------------ write


def write_rows(
    local: str,
    keep: Callable[[int], bool],
    sink: Any,
    members: Callable[[int], Sequence[tuple[str, bytes]]] | None = None,
    note: Callable[[int], str] | None = None,
) -> int:
    """Write the rows of the local Parquet file ``local`` that ``keep`` keeps to ``sink`` (a writable
    stream); returns how many. One input row group and the output members of its rows kept are held
    at a time, and a row group none of whose rows is kept is never read.

    ``members(position)`` gives a kept row's output members (named ``<key>.<column>``), asked for one
    row group at a time; a member column without an output member is null (its input value is never
    released unless ``members`` gives it). Without ``members`` (a quarantine of the rows held back),
    the rows kept are copied as they are, their member columns too, with a string column
    ``raypipe_quarantine`` holding ``note(position)``, and a row group that cannot be read (or is over
    the size limit) is left out. The schema, its metadata and the row order are the input's; the
    compression is that of the input's first column chunk. A table none of whose rows is kept comes
    out with no rows (and, if its schema cannot be read, no columns).
    """
    try:
        table = open_table(local)
    except ParquetShardError:
        table = None
    if table is None:
        return _write_empty(pa.schema([]), sink)
    schema = table.schema_arrow
    plan = []
    start = 0
    for group in range(table.num_row_groups):
        count = table.metadata.row_group(group).num_rows
        plan.append([offset for offset in range(count) if keep(start + offset)])
        start += count
    if not any(plan):
        return _write_empty(schema, sink)
    copy = members is None
    columns = member_columns(schema, strict=not copy)
    note_column = quarantine_column(schema) if note is not None else ""
    out_schema = schema.append(pa.field(note_column, pa.string())) if note is not None else schema
    written, start = 0, 0
    with pq.ParquetWriter(_Stream(sink), out_schema, compression=_compression(table)) as writer:
        for group, kept in enumerate(plan):
            chunk = _read_group(table, group, kept, strict=not copy)
            if chunk is not None:
                chunk = _kept_rows(chunk, kept)
                if members is not None:
                    outputs = [
                        {column_of(row_key(start + offset), name): data for name, data in members(start + offset)}
                        for offset in kept
                    ]
                    for column in columns:
                        index = chunk.schema.get_field_index(column.name)
                        chunk = chunk.set_column(
                            index, schema.field(index), _replaced(chunk.column(index), column, outputs)
                        )
                if note is not None:
                    notes = pa.array([note(start + offset) for offset in kept], pa.string())
                    chunk = chunk.append_column(out_schema.field(note_column), notes)
                writer.write_table(chunk.replace_schema_metadata(out_schema.metadata))
                written += chunk.num_rows
            start += table.metadata.row_group(group).num_rows
    return written


def _kept_rows(chunk: pa.Table, offsets: list[int]) -> pa.Table:
    """The rows at ``offsets``, through plain types: a view has no ``take`` kernel, and a dictionary
    taken as it is keeps every value of the input's dictionary, those of rows left out too (which the
    writer would write). Casting back re-encodes each dictionary from the rows kept."""
    through = pa.schema([f.with_type(_through(f.type)) for f in chunk.schema], chunk.schema.metadata)
    taken = chunk.cast(through).take(pa.array(offsets, pa.int64()))
    return taken.cast(chunk.schema) if through != chunk.schema else taken


def _through(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every dictionary replaced by its values and every view by its plain type."""
    if pa.types.is_dictionary(kind):
        return _through(kind.value_type)
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_through(kind.field(i).type)) for i in range(kind.num_fields)])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_through(kind.value_type)))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_through(kind.value_type)))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_through(kind.value_type)), kind.list_size)
    if pa.types.is_map(kind):
        return pa.map_(
            kind.key_field.with_type(_through(kind.key_type)),
            kind.item_field.with_type(_through(kind.item_type)),
            kind.keys_sorted,
        )
    return kind


def _write_empty(schema: pa.Schema, sink: Any) -> int:
    """A table with no rows: the input's columns, without any metadata."""
    bare = pa.schema([f.remove_metadata() for f in schema])
    pq.write_table(pa.Table.from_batches([], schema=bare), _Stream(sink))
    return 0


def _read_group(table: pq.ParquetFile, group: int, kept: list[int], strict: bool) -> pa.Table | None:
    """A row group with rows kept; None when none is. Leniently (a quarantine), also None for a group
    that is over the size limit or cannot be read: its held rows are not copied (their audit says why)."""
    if not kept:
        return None
    if strict:
        return table.read_row_group(group, use_threads=False)
    if table.metadata.row_group(group).total_byte_size > ROW_GROUP_FLOOR_BYTES:
        return None
    try:
        return table.read_row_group(group, use_threads=False)
    except (pa.ArrowException, OSError, ValueError):
        return None


def quarantine_column(schema: pa.Schema) -> str:
    """The name of a quarantine table's note column: :data:`QUARANTINE_COLUMN`, with underscores added
    while the input has a column of that name."""
    name = QUARANTINE_COLUMN
    while name in schema.names:
        name += "_"
    return name


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


def _replaced(values: pa.ChunkedArray, column: MemberColumn, outputs: list[dict[str, bytes]]) -> pa.Array:
    """A member column with each kept row's output member (null where it has none)."""
    array = values.combine_chunks()
    if not column.struct:
        return pa.array([output.get(column.name) for output in outputs], array.type)
    kind = array.type
    bytes_at = kind.get_field_index("bytes")
    children = [array.field(i) for i in range(kind.num_fields)]
    children[bytes_at] = pa.array([output.get(column.name) for output in outputs], kind.field(bytes_at).type)
    fields = [kind.field(i) for i in range(kind.num_fields)]
    has_output = [column.name in output for output in outputs]
    valid = pc.or_(array.is_valid(), pa.array(has_output, pa.bool_()))
    return pa.StructArray.from_arrays(children, fields=fields, mask=pc.invert(valid))


def _compression(table: pq.ParquetFile) -> str:
    if table.num_row_groups == 0 or table.metadata.num_columns == 0:
        return "snappy"
    codec = str(table.metadata.row_group(0).column(0).compression).lower()
    return _CODECS.get(codec, "none" if codec == "uncompressed" else "snappy")


def keyed_members(local: str, keys: Sequence[str]) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Every row of a local output table, in order, as ``(key, members)``: row ``j`` is the ``j``-th
    released sample, so it takes ``keys[j]`` (``row j`` past the end of ``keys``), and its members are
    named as the read stage named them. Raises :class:`ParquetShardError` for anything it cannot read."""
    try:
        table = open_table(local)
        columns = member_columns(table.schema_arrow, strict=False)  # the sha256 vouches for the rest
        position = 0
        for group in range(table.num_row_groups):
            chunk = table.read_row_group(group, columns=[c.name for c in columns], use_threads=False)
            values = [_member_values(chunk, column)[0] for column in columns]
            for offset in range(chunk.num_rows):
                key = str(keys[position]) if position < len(keys) else f"row {position}"
                present = [(c.name, v[offset]) for c, v in zip(columns, values) if v[offset] is not None]
                yield key, [(member_name(key, name), bytes(data)) for name, data in present]
                position += 1
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParquetShardError(f"not a readable table ({str(exc)[:300]})") from None
