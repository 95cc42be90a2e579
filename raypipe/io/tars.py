"""WebDataset tar shards as raw bytes: streaming reader and deterministic writer.

Nothing here decodes, unpickles or extracts to disk: members are bytes in, bytes out.

Key rule (WebDataset): the key of a member is its path up to the first dot of its base name (the
folder part stays in the key) and its extension is the rest, so ``a/b.c.seg.png`` has key ``a/b``
and extension ``c.seg.png``. Consecutive members with the same key form one sample.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

from raypipe.logs import get_logger

logger = get_logger(__name__)

# Reasons a member is reported as a TarProblem instead of being read.
SYMLINK = "symlink"
HARDLINK = "hardlink"
SPECIAL_FILE = "special_file"  # devices, fifos, sparse or unknown member types
ABSOLUTE_NAME = "absolute_name"
PARENT_REFERENCE = "parent_reference"
EMPTY_KEY = "empty_key"
OVER_LIMIT = "over_limit"  # larger than the reader's ``max_member_bytes``: skipped, never held in memory
NUL_IN_NAME = "nul_in_name"  # readers written in C end the name at the NUL and see another extension
UNDECODABLE_NAME = "undecodable_name"  # not UTF-8: no reader agrees on what the name is
EXTENDED_HEADER = "extended_header"  # the pax / long-name header before the member was refused

# Long-name and pax headers are read into memory whole by tarfile; real ones are a few hundred bytes
# (a path is at most a few KiB), so a larger one is hostile.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
# Python's tarfile searches pax payloads with a regular expression that takes quadratic time in a run
# of digits (CVE-2024-6232: 64 KB of digits take seconds, 128 KB half a minute). No real record holds
# a number this long.
MAX_PAX_DIGIT_RUN = 64
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{%d}" % (MAX_PAX_DIGIT_RUN + 1))
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_EXTENDED_HEADER_TYPES = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
)

# Header errors tarfile raises internally but leaves out of its public names (and typeshed):
# a block of zeros (the end-of-archive marker) and no block at all (the input simply stops).
_END_OF_ARCHIVE_BLOCK: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_NO_HEADER_BLOCK: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_SUBSEQUENT_HEADER: type[Exception] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]


class TarReadError(RuntimeError):
    """A shard is truncated or corrupt.

    Raised after every complete sample before the damage was yielded. ``pending`` is the sample that was
    being read when the damage was found (its members may be incomplete), or ``None``.
    """

    def __init__(self, message: str, pending: Sample | None = None) -> None:
        super().__init__(message)
        self.pending = pending


def split_member_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name under the WebDataset key rule."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(folder, stem) if folder else stem
    return key, ext if dot else ""


@dataclass
class Sample:
    """One WebDataset sample: its key and its members as ``(full member name, bytes)`` in tar order.

    ``spans`` (set by :func:`iter_samples` for an uncompressed tar) holds each member's ``(offset, size)``
    in the tar, so its bytes can be read again later without carrying them along.
    """

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    spans: list[tuple[int, int]] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def ext(member_name: str) -> str:
        """The extension of a member name (``"000001.seg.png"`` -> ``"seg.png"``)."""
        return split_member_name(member_name)[1]

    @property
    def names(self) -> list[str]:
        """Member names in order."""
        return [name for name, _ in self.members]

    def get(self, ext: str) -> bytes | None:
        """Bytes of the first member with extension ``ext``, or ``None``."""
        for name, data in self.members:
            if self.ext(name) == ext:
                return data
        return None


@dataclass(frozen=True)
class TarProblem:
    """A member that was not read, with the reason (one of the module's reason constants).

    ``key`` is the key the member's name would have had, so the problem can be tied to its sample;
    ``detail`` adds what the reason alone does not say (e.g. the size of an over-limit member).
    """

    member_name: str
    reason: str
    key: str
    detail: str = ""


def _unsafe_name_reason(name: str) -> str | None:
    if name.startswith("/"):
        return ABSOLUTE_NAME
    if ".." in name.split("/"):
        return PARENT_REFERENCE
    return None


def _name_problem(name: str) -> str | None:
    if "\0" in name:
        return NUL_IN_NAME
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # tarfile keeps undecodable bytes as lone surrogates
        return UNDECODABLE_NAME
    return None


def audit_safe(text: str) -> str:
    """``text`` with undecodable bytes and NULs written as escapes, so that it can be stored and shown."""
    raw = text.encode("utf-8", "surrogateescape" if _surrogates_only(text) else "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").replace("\0", "\\x00")


def _surrogates_only(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _problem_reason(member: tarfile.TarInfo) -> str | None:
    refused = getattr(member, "refused_header", None)
    if refused is not None:
        return EXTENDED_HEADER
    name_problem = _name_problem(member.name)
    if name_problem is not None:
        return name_problem
    if member.issym():
        return SYMLINK
    if member.islnk():
        return HARDLINK
    if not member.isreg():
        return SPECIAL_FILE
    reason = _unsafe_name_reason(member.name)
    if reason is not None:
        return reason
    if not split_member_name(member.name)[0].rpartition("/")[2]:
        return EMPTY_KEY
    return None


def _tracking_tarinfo(ending: list[BaseException]) -> type[tarfile.TarInfo]:
    """A TarInfo class that remembers why header reading stopped and checks extended headers first.

    ``tarfile`` treats a missing or damaged header after the first member as the end of the archive,
    so a shard cut at a member boundary would otherwise read as complete. Only an end-of-archive block
    (zeros) is a clean end.

    Extended headers (pax, GNU long names) are read here before tarfile sees them: one over
    ``MAX_EXTENDED_HEADER_BYTES`` is skipped unread, a pax payload is checked in one linear pass, and a
    refused one makes the member it describes a problem (``refused_header``) instead of ending the
    shard. A refused global pax header applies to every later member, so it ends the shard.
    """

    class _TrackingTarInfo(tarfile.TarInfo):
        refused_header: str | None = None

        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as exc:
                ending.append(exc)
                raise

        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            # ``_proc_member`` is tarfile's internal dispatch for every header; an extended header's
            # handler starts by reading the payload, which _ReplayOnce hands it from memory.
            if self.type not in _EXTENDED_HEADER_TYPES:
                return super()._proc_member(tarfile_)  # type: ignore[misc]
            payload = _read_extended_header(tarfile_, self._block(self.size), self.size)  # type: ignore[attr-defined]
            problem = _extended_header_problem(self, payload)
            if problem is None:
                assert payload is not None
                tarfile_.fileobj = _ReplayOnce(tarfile_, payload)  # type: ignore[assignment]
                return super()._proc_member(tarfile_)  # type: ignore[misc]
            if self.type == tarfile.XGLTYPE:
                raise _INVALID_HEADER(problem)
            try:
                described = type(self).fromtarfile(tarfile_)
            except tarfile.HeaderError as exc:
                raise _SUBSEQUENT_HEADER(str(exc)) from None
            described.offset = self.offset
            described.refused_header = problem  # type: ignore[attr-defined]
            return described

    return _TrackingTarInfo


class _ReplayOnce:
    """Stands in for the archive's stream for exactly one read: the extended header's payload, already
    read and checked; then the stream is put back."""

    def __init__(self, archive: tarfile.TarFile, payload: bytes) -> None:
        self.archive, self.payload, self.stream = archive, payload, archive.fileobj

    def read(self, size: int = -1) -> bytes:
        self.archive.fileobj = self.stream
        if size != len(self.payload):  # tarfile changed how it reads headers: fail loudly, never misparse
            raise tarfile.ReadError(f"unexpected read of {size} bytes of an extended header")
        return self.payload


def _read_extended_header(archive: tarfile.TarFile, blocks: int, size: int) -> bytes | None:
    """The payload blocks of an extended header, or None (skipped in small reads) when over the limit."""
    stream = archive.fileobj
    assert stream is not None
    if size <= MAX_EXTENDED_HEADER_BYTES:
        return stream.read(blocks)
    left = blocks
    while left:
        chunk = stream.read(min(left, 1024 * 1024))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        left -= len(chunk)
    return None


def _extended_header_problem(header: tarfile.TarInfo, payload: bytes | None) -> str | None:
    if payload is None:
        return f"extended header of {header.size} bytes, over the limit of {MAX_EXTENDED_HEADER_BYTES}"
    if header.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
        return None  # a plain NUL-terminated name: tarfile reads it in linear time
    return pax_problem(payload[: header.size])


def pax_problem(payload: bytes) -> str | None:
    """Why tarfile must not parse this pax payload, or None: one linear pass over its records.

    A record is ``LENGTH KEYWORD=VALUE\\n`` with LENGTH counting the whole record; the payload is a run
    of records, then only NUL padding.
    """
    if _LONG_DIGIT_RUN.search(payload):
        return (
            f"pax header with a run of more than {MAX_PAX_DIGIT_RUN} digits (Python's tarfile parses it in"
            " quadratic time, CVE-2024-6232)"
        )
    pos, size = 0, len(payload)
    while pos < size and payload[pos] != 0:
        length = _PAX_LENGTH.match(payload, pos)
        end = pos + int(length.group(1)) if length else pos
        if length is None or end <= length.end() or end > size or payload[end - 1] != 0x0A:
            return f"malformed pax record at byte {pos}"
        if b"=" not in payload[length.end() : end]:
            return f"pax record without '=' at byte {pos}"
        pos = end
    if payload.count(0, pos) != size - pos:
        return f"data after the pax records at byte {pos}"
    return None


def _end_problem(ending: list[BaseException]) -> str | None:
    if not ending:
        return "archive stopped without an end-of-archive block"
    last = ending[-1]
    if isinstance(last, _END_OF_ARCHIVE_BLOCK):
        return None
    if isinstance(last, _NO_HEADER_BLOCK):
        return "archive ends without an end-of-archive block (truncated at a member boundary)"
    return f"damaged member header ({last}); the archive is truncated or corrupt"


def iter_samples(
    fileobj: IO[bytes], source: str = "<tar>", max_member_bytes: int | None = None
) -> Iterator[Sample | TarProblem]:
    """Stream the samples of a WebDataset tar, in order, plus a :class:`TarProblem` per skipped member.

    Regular files are read; folders are ignored; links, devices, unsafe names (absolute, ``..``) and
    members larger than ``max_member_bytes`` are not read but reported (an over-limit member is skipped
    in the stream, never held in memory). A problem is yielded where it occurs in the stream: a problem
    member with the key of the sample being read is yielded before that sample (which it belongs to);
    one with another key first ends that sample, like any member with a new key, so a problem always
    belongs to the next sample yielded if, and only if, their keys are equal. A truncated or corrupt
    archive raises :class:`TarReadError` (naming ``source``) after the samples known to be complete;
    the sample being read when the damage was found is not yielded (it may miss members) but is
    attached to the error as ``pending``. Compressed tars are accepted; only the samples of an
    uncompressed tar carry their members' ``spans``.
    """
    ending: list[BaseException] = []
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_tracking_tarinfo(ending)) as archive:
            plain = getattr(archive.fileobj, "comptype", "tar") == "tar"  # offsets mean something
            for member in archive:
                # tarfile keeps every header it read in ``members``, even when streaming: forget them,
                # so memory stays bounded by a member, not by the shard.
                archive.members.clear()  # type: ignore[attr-defined]
                if member.isdir():
                    continue
                key = split_member_name(member.name)[0]
                if current is not None and current.key != key:
                    yield current  # a new key proves the previous sample complete
                    current = None
                skipped = _member_problem(member, max_member_bytes)
                if skipped is not None:
                    logger.debug("%s: member %r not read (%s)", source, member.name, skipped.reason)
                    yield skipped
                    continue
                if current is None:
                    current = Sample(key, spans=[] if plain else None)
                current.members.append((member.name, _read_member(archive, member)))
                if current.spans is not None:
                    current.spans.append((member.offset_data, member.size))
    except (tarfile.TarError, EOFError) as exc:
        raise TarReadError(_damage_message(source, current, str(exc)), pending=current) from exc
    problem = _end_problem(ending)
    if problem is not None:
        raise TarReadError(_damage_message(source, current, problem), pending=current)
    if current is not None:
        yield current


@dataclass(frozen=True)
class MemberHeader:
    """A regular member of a tar as its header describes it: where its bytes lie, not the bytes."""

    name: str
    offset: int  # of the member's data in the tar
    size: int


def iter_headers(fileobj: IO[bytes], source: str = "<tar>") -> Iterator[MemberHeader]:
    """The regular members of an uncompressed tar from its headers alone: each header is read and the
    member's data is skipped by seeking, so a shard costs a few hundred bytes per member, not its size.
    Links, folders and other special members are left out. A damaged archive raises
    :class:`TarReadError` naming ``source``."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # type: ignore[attr-defined]
                if member.isfile():
                    yield MemberHeader(member.name, member.offset_data, member.size)
    except (tarfile.TarError, EOFError) as exc:
        raise TarReadError(f"{source}: the tar's headers cannot be read: {exc}") from exc


def _member_problem(member: tarfile.TarInfo, max_member_bytes: int | None) -> TarProblem | None:
    key = audit_safe(split_member_name(member.name)[0])
    reason = _problem_reason(member)
    if reason is not None:
        return TarProblem(member.name, reason, key, getattr(member, "refused_header", None) or "")
    if max_member_bytes is not None and member.size > max_member_bytes:
        return TarProblem(member.name, OVER_LIMIT, key, f"{member.size} bytes, over the limit of {max_member_bytes}")
    return None


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:  # cannot happen for regular files; keeps the type checker honest
        raise TarReadError(f"member {member.name!r} has no data")
    with handle:
        return handle.read()


def _damage_message(source: str, pending: Sample | None, problem: str) -> str:
    where = f" while reading sample {pending.key!r}" if pending is not None else ""
    return f"{source}: unreadable tar{where}: {problem}"


def _validate_sample(sample: Sample, previous_key: str | None) -> None:
    if sample.key == previous_key:
        raise ValueError(f"consecutive samples share the key {sample.key!r}; a reader would merge them")
    if not sample.members:
        raise ValueError(f"sample {sample.key!r} has no members")
    for name, _ in sample.members:
        reason = _unsafe_name_reason(name)
        if reason is not None or not name:
            raise ValueError(f"sample {sample.key!r}: unsafe member name {name!r} ({reason or 'empty'})")
        key = split_member_name(name)[0]
        if key != sample.key:
            raise ValueError(f"member {name!r} has key {key!r}, not its sample's key {sample.key!r}")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class Writable(Protocol):
    """Where a tar can be written: anything with ``write`` (a file, an upload, a hashing wrapper)."""

    def write(self, data: bytes, /) -> int: ...


def write_tar(samples: Iterable[Sample], fileobj: Writable) -> None:
    """Write samples as a tar, members in the given order, deterministically.

    Every member is a regular file with mtime 0, uid/gid 0, empty owner names and mode 0644, in POSIX
    (pax) format: plain ustar headers, plus a pax record only for names ustar cannot hold. The same
    samples always give the same bytes. Raises ``ValueError`` for unsafe names, members whose key
    differs from their sample's, or consecutive samples with the same key.
    """
    previous_key: str | None = None
    stream = cast(IO[bytes], fileobj)  # a "w|" tar only ever calls write
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as archive:
        for sample in samples:
            _validate_sample(sample, previous_key)
            previous_key = sample.key
            for name, data in sample.members:
                payload = bytes(data)
                archive.addfile(_member_info(name, len(payload)), io.BytesIO(payload))


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """The tar of ``samples`` as bytes (see :func:`write_tar`)."""
    buffer = io.BytesIO()
    write_tar(samples, buffer)
    return buffer.getvalue()


def read_tar(data: bytes, source: str = "<tar>") -> list[Sample | TarProblem]:
    """Everything :func:`iter_samples` yields for in-memory tar bytes (samples and problems)."""
    return list(iter_samples(io.BytesIO(data), source))
