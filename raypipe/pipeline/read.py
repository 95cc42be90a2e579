"""Read stage: every sample of an input shard as a task (Ray-free; Ray Data runs it through
:class:`raypipe.pipeline.source.ShardDatasource`, one read task per shard).

raypipe reads tars with its own streaming reader (:mod:`raypipe.io.tars`) rather than
``read_webdataset``: it keeps every member's exact name and order (output shards must hold the same
members in the same order), never decodes a member, and turns links, unsafe names and damaged tars
into audit records instead of crashing the job: a member that is not read (a link, an unsafe,
NUL-bearing or undecodable name, a refused extended header, an over-size member) fails the sample of
its key, and a key seen twice in a shard fails the later sample. Every check is linear in the sample's
member count. Samples already committed by an earlier run are skipped here, so resumed work is never
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raypipe.audit.schema import sample_digest
from raypipe.config import LimitsConfig
from raypipe.imagefiles import picture_in_text
from raypipe.images import identify_image, image_format_for
from raypipe.io.filetrees import (
    file_digest,
    folder_uri,
    group_files,
    group_identity,
    is_files_group,
    listing_digest,
    samples_of,
)
from raypipe.io.identity import HashingReader, object_identity, same_object
from raypipe.io.publish import read_bytes
from raypipe.io.spans import InputChangedError, MemberRef
from raypipe.io.storage import StorageOptions, filesystem, redact
from raypipe.io.tables import ParquetShardError, Row, is_table_shard, iter_rows, spooled
from raypipe.io.tars import OVER_LIMIT, Sample, TarProblem, TarReadError, iter_samples
from raypipe.logs import get_logger
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.task import SampleTask

log = get_logger(__name__)


@dataclass(frozen=True)
class ShardWork:
    """A shard still to be processed, and the sample positions already committed in it."""

    uri: str
    name: str
    committed: Positions = field(default_factory=Positions)  # runs: O(gaps), not O(samples)
    identity: dict[str, Any] | None = None  # the input as planned (raypipe.io.identity); None: not pinned
    attribute_column: str | None = None  # a table's column with each row's attribute prompt (column:NAME)


@dataclass
class _Entry:
    """One input sample as the reader saw it: its readable members (if any), the members of its key
    that were not read, and the damage that ended the shard while it was being read (if any)."""

    sample: Sample | None
    problems: list[TarProblem]
    damage: str | None = None

    @property
    def key(self) -> str:
        if self.sample is not None:
            return self.sample.key
        return self.problems[0].key if self.problems else ""


def shard_tasks(work: ShardWork, options: StorageOptions, limits: LimitsConfig) -> Iterator[SampleTask]:
    """Every sample of a shard as a task (committed ones skipped), then the end-of-shard marker."""
    if is_table_shard(work.name):
        yield from table_tasks(work, options, limits)
        return
    if is_files_group(work.name):
        yield from files_tasks(work, options, limits)
        return
    from raypipe.io.retry import retry

    fs, path = filesystem(work.uri, options)
    source = redact(work.uri)
    input_id = _check_identity(work, options)
    seq = 0
    seen_keys: set[str] = set()
    with retry(lambda: fs.open(path, "rb")) as fh:
        reader = HashingReader(fh)
        for entry in _entries(reader, source, limits):
            duplicate = entry.key in seen_keys
            seen_keys.add(entry.key)
            if seq not in work.committed:
                task = _task(work, seq, entry, duplicate)
                task.input_id = input_id
                yield task
            seq += 1
        shard_sha256 = reader.drain()
    end = SampleTask.end_marker(source, work.name, seq)
    end.source_uri = work.uri
    end.input_id = json.dumps(json.loads(input_id) | {"sha256": shard_sha256}, sort_keys=True) if input_id else ""
    yield end


def table_tasks(work: ShardWork, options: StorageOptions, limits: LimitsConfig) -> Iterator[SampleTask]:
    """Every row of a Parquet shard as a task (committed ones skipped), then the end-of-shard marker.

    The table is spooled to a local file while it is hashed, then parsed a batch of rows at a time
    (:mod:`raypipe.io.tables`). Its identity is always pinned, so finalize can check that it copies
    the other columns from the very bytes these rows were read from. A table that cannot be parsed
    gives one failed record; a row group that cannot be read fails its own rows.
    """
    fs, path = filesystem(work.uri, options)
    source = redact(work.uri)
    if work.identity is not None:
        planned = json.loads(_check_identity(work, options))
    else:
        planned = object_identity(work.uri, options)
    seq = 0
    with spooled(fs, path, f"open {source}") as (local, shard_sha256):
        input_id = json.dumps(planned | {"sha256": shard_sha256}, sort_keys=True)
        try:
            rows = iter_rows(
                local, limits.max_member_bytes, scan_text=_picture_in_text, text_column=work.attribute_column
            )
        except ParquetShardError as exc:  # not Parquet at all: one record says so
            rows = iter([Row("", problems=[f"{source}: {exc}"])])
        for row in rows:
            if seq not in work.committed:
                task = _row_task(work, seq, row)
                task.input_id = input_id  # with the table's sha256: rows of two versions never mix
                yield task
            seq += 1
    end = SampleTask.end_marker(source, work.name, seq)
    end.source_uri = work.uri
    end.input_id = input_id
    yield end


def files_tasks(work: ShardWork, options: StorageOptions, limits: LimitsConfig) -> Iterator[SampleTask]:
    """Every sample of a group of files as a task (committed ones skipped), then the end-of-shard marker.

    The group's folder is listed again and must be the listing the plan pinned; its files are read
    sample by sample (members in name order) and carried as bytes. A file over
    ``limits.max_member_bytes`` is not read and fails its sample, as in a tar. A file that is not an
    image is released as it is, so one that holds pictures raypipe cannot scan (an archive, a video, a
    document, a picture's bytes or base64 inside it) fails its sample (see :func:`unscanned_content`).
    """
    source = redact(work.uri)
    listing = group_files(work.uri, options)
    planned = group_identity(work.uri, options, listing)
    if work.identity is not None and not same_object(work.identity, planned):
        raise InputChangedError(
            f"{source}: files were added, removed or replaced in the folder after the run was planned (was"
            f" {work.identity}, now {planned}); rerun the same command to restart that group"
        )
    files = {f.name: f for f in listing}
    fs, folder = filesystem(folder_uri(work.uri), options)
    hashes: list[tuple[str, str]] = []
    seq = 0
    for key, names in samples_of(files):
        members: list[tuple[str, bytes]] = []
        problems: list[str] = []  # files not read
        unscanned: list[str] = []  # files read that must not be released as they are
        for name in names:
            if files[name].size > limits.max_member_bytes:
                detail = f"{files[name].size} bytes, over the limit of {limits.max_member_bytes}"
                problems.append(_problem_message(TarProblem(name, OVER_LIMIT, key, detail)))  # as in a tar
                hashes.append((name, file_digest(fs, posixpath.join(folder, name))))  # streamed, never held
                continue
            data = read_bytes(fs, posixpath.join(folder, name))
            hashes.append((name, hashlib.sha256(data).hexdigest()))
            members.append((name, data))
            found = unscanned_content(name, data)
            if found is not None:
                unscanned.append(f"{name}: {found}, which raypipe does not scan")
        if seq not in work.committed:
            task = SampleTask(
                shard=source,
                shard_name=work.name,
                seq=seq,
                key=key,
                members=members,
                input_sha256=sample_digest(members),
                source_uri=work.uri,
                refs=None,  # carried as bytes
            )
            if problems:
                task.fail("read", "; ".join(problems))
            if unscanned:
                task.fail("scan", "; ".join(unscanned))
            task.input_id = json.dumps(planned, sort_keys=True)
            yield task
        seq += 1
    end = SampleTask.end_marker(source, work.name, seq)
    end.source_uri = work.uri
    end.input_id = json.dumps(planned | {"sha256": listing_digest(hashes)}, sort_keys=True)
    yield end


# What a file that is not an image begins with when it is a container of other files or of video
# frames: raypipe would release it as it is, without looking inside.
_CONTAINERS = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"%PDF", "a PDF document"),
    (b"PAR1", "a Parquet table"),
    (b"\x1a\x45\xdf\xa3", "a Matroska or WebM video"),
    (b"RIFF", "a RIFF file (AVI video or WebP)"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 picture"),
    (b"\xd0\xcf\x11\xe0", "an OLE document"),
)


# Pictures written as text in forms the table scan does not look for: the hex (also spaced, as dump
# tools write it), decimal and URL-safe base64 starts of a JPEG, a PNG or a ZIP, and any data URI.
_ENCODED_PICTURE = re.compile(
    rb"(?i:ffd8ff[0-9a-f]{6}|89504e470d0a1a0a|504b0304|data:image/)"
    rb"|(?:_9j_|iVBORw0KGgo|UEsDB)[A-Za-z0-9+/_\-]{16}"
    rb"|\b255[ \t,;]+216[ \t,;]+255\b|\b137[ \t,;]+80[ \t,;]+78[ \t,;]+71\b"
)
# What may encode a picture of any format: a run of base64, base32 or hex characters (line breaks
# removed, so wrapped base64 counts), or a run of byte values (0-255, or two hex digits) however they
# are separated, as raw pixels are written as numbers.
_ALPHABET_RUN = re.compile(rb"[A-Za-z0-9+/=_\-]+")
_LONGEST_ALPHABET_RUN = 512
_TOKEN = re.compile(rb"[^\s,;:\[\]()]+")
_BYTE_VALUE = re.compile(rb"(?:0x|\\x|%)?[0-9A-Fa-f]{2}|25[0-5]|2[0-4]\d|1?\d?\d")
_LONGEST_BYTE_RUN = 1024


def _encoded_picture(text: bytes) -> str | None:
    """Where ``text`` may hold a picture written as text (None: nowhere). Linear in its size."""
    found = _ENCODED_PICTURE.search(text)
    if found is None:
        found = _ENCODED_PICTURE.search(re.sub(rb"[ \t]+", b"", text))  # hex dumps: "ff d8 ff e0"
    if found is not None:
        return f"the start of a picture written as text (data URI, hex, decimal or base64) at byte {found.start()}"
    unwrapped = re.sub(rb"\r|\n|\\n", b"", text)
    if any(m.end() - m.start() >= _LONGEST_ALPHABET_RUN for m in _ALPHABET_RUN.finditer(unwrapped)):
        return f"a run of {_LONGEST_ALPHABET_RUN} or more base64, base32 or hex characters"
    run = 0
    for token in _TOKEN.finditer(text):
        run = run + 1 if _BYTE_VALUE.fullmatch(token.group()) else 0
        if run >= _LONGEST_BYTE_RUN:
            return f"{_LONGEST_BYTE_RUN} or more byte values in a row (raw pixels written as numbers)"
    return None


def unscanned_content(name: str, data: bytes) -> str | None:
    """Why a file released as it is may hold a picture raypipe does not scan (None: it may not).

    A file that is a picture (by its name or its content) is decoded and scanned by the detect stage
    instead. Every other file is released only when it is text (UTF-8, no NUL) with no picture written
    in it (a picture's bytes, a data URI, and anything that may encode one: 512 or more characters of
    the base64, base32 or hex alphabets in a row, or 1024 or more byte values in a row): binary data
    may be an archive, a video, a document or raw pixels, which hold pictures raypipe never sees.
    Archives and media are named by their first bytes, for the message.
    """
    if image_format_for(name) is not None or identify_image(data) is not None:
        return None
    if data[257:262] == b"ustar":
        return "it is a tar archive"
    if data[4:8] == b"ftyp":
        return "it is an ISO media file (MP4, MOV, HEIC, ...)"
    for magic, what in _CONTAINERS:
        if data.startswith(magic):
            return f"it is {what}"
    found = _picture_in_text(data)
    if found is not None:
        return found
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is binary data, neither text nor a picture raypipe decodes"
    if b"\x00" in data:
        return "it holds NUL bytes: binary data, not text"
    unescaped = data.replace(b"\\/", b"/")  # JSON may write "/" as "\/"
    found = _picture_in_text(unescaped) if unescaped != data else None
    encoded = _encoded_picture(unescaped) if found is None else None
    return found or (f"holds what may be a picture: {encoded}" if encoded else None)


def _picture_in_text(data: bytes) -> str | None:
    """Why a text value of a table must not be released as it is (a picture in it), if it must not."""
    found = picture_in_text(data)
    if found is None and len(data) >= 32:
        content = identify_image(data)
        found = f"holds a picture in the {content} format (found by its content)" if content else None
    return found


def _row_task(work: ShardWork, seq: int, row: Row) -> SampleTask:
    task = SampleTask(
        shard=redact(work.uri),
        shard_name=work.name,
        seq=seq,
        key=row.key,
        members=row.members,
        input_sha256=sample_digest(row.members),
        source_uri=work.uri,
        refs=None,  # values of compressed pages: carried as bytes
    )
    task.attribute_column = row.text
    if row.problems:
        task.fail("read", "; ".join(row.problems))
    return task


def _check_identity(work: ShardWork, options: StorageOptions) -> str:
    """The planned identity of the input as JSON, after checking the input is still that version."""
    if work.identity is None:
        return ""
    current = object_identity(work.uri, options)
    if not same_object(work.identity, current):
        raise InputChangedError(
            f"{redact(work.uri)}: the input shard changed after the run was planned "
            f"(was {work.identity}, now {current}); rerun the same command to restart that shard"
        )
    return json.dumps(work.identity, sort_keys=True)


def _entries(fh: Any, source: str, limits: LimitsConfig) -> Iterator[_Entry]:
    """The shard's samples with the members of their key that were not read (see ``iter_samples``:
    a problem belongs to the next sample iff their keys are equal); a run of problems with no readable
    member next to it is a sample of its own; damage ends the shard with the sample it interrupted."""
    held: list[TarProblem] = []
    try:
        for item in iter_samples(fh, source=source, max_member_bytes=limits.max_member_bytes):
            if held and held[-1].key != item.key:
                yield _Entry(None, held)
                held = []
            if isinstance(item, TarProblem):
                held.append(item)
            else:
                yield _Entry(item, held)
                held = []
    except TarReadError as exc:
        pending = exc.pending
        if held and (pending is None or held[-1].key != pending.key):
            yield _Entry(None, held)
            held = []
        yield _Entry(pending, held, damage=str(exc))
        return
    if held:
        yield _Entry(None, held)


def _task(work: ShardWork, seq: int, entry: _Entry, duplicate_key: bool) -> SampleTask:
    members = list(entry.sample.members) if entry.sample is not None else []
    spans = entry.sample.spans if entry.sample is not None else []
    task = SampleTask(
        shard=redact(work.uri),
        shard_name=work.name,
        seq=seq,
        key=entry.key,
        members=members,
        input_sha256=sample_digest(members) if entry.sample is not None else "",
        source_uri=work.uri,
        refs=None if spans is None else [MemberRef.of(span, data) for span, (_, data) in zip(spans, members)],
    )
    if entry.damage is not None:
        task.fail("read", entry.damage)
    if entry.problems:
        task.fail("read", "; ".join(_problem_message(p) for p in entry.problems))
    duplicates = sorted(name for name, count in Counter(name for name, _ in members).items() if count > 1)
    if duplicates:
        task.fail("read", f"duplicate member names in one sample: {duplicates}")
    if duplicate_key:
        # Output shards keep the input order; two released samples with one key could end up side by
        # side (when a sample between them is not released), and every reader would merge them.
        task.fail(
            "read",
            f"key {entry.key!r} was already used by an earlier sample of this shard (members of one key"
            " that are not contiguous); the later sample is not released",
        )
    return task


def _problem_message(problem: TarProblem) -> str:
    message = f"member {problem.member_name!r} not read: {problem.reason}"
    if problem.reason == OVER_LIMIT:
        return f"{message} ({problem.detail}; limits.max_member_bytes)"
    return f"{message} ({problem.detail})" if problem.detail else message
