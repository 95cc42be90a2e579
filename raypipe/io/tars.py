"""WebDataset tar shards as raw bytes: streaming reader and deterministic writer.

Nothing here decodes, unpickles or extracts to disk: members are bytes in, bytes out.

Key rule (WebDataset): the key of a member is its path up to the first dot of its base name (the
folder part stays in the key) and its extension is the rest, so ``a/b.c.seg.png`` has key ``a/b``
and extension ``c.seg.png``. Consecutive members with the same key form one sample.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

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

# Long-name and pax headers are read into memory whole by tarfile; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER_BYTES = 1024 * 1024
_EXTENDED_HEADER_TYPES = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
)

# Header errors tarfile raises internally but leaves out of its public names (and typeshed):
# a block of zeros (the end-of-archive marker) and no block at all (the input simply stops).
_END_OF_ARCHIVE_BLOCK: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_NO_HEADER_BLOCK: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]


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
    """One WebDataset sample: its key and its members as ``(full member name, bytes)`` in tar order."""

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)

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


def _problem_reason(member: tarfile.TarInfo) -> str | None:
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
    """A TarInfo class that remembers why header reading stopped.

    ``tarfile`` treats a missing or damaged header after the first member as the end of the archive,
    so a shard cut at a member boundary would otherwise read as complete. Only an end-of-archive block
    (zeros) is a clean end.
    """

    class _TrackingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as exc:
                ending.append(exc)
                raise

        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            # tarfile reads an extended header's payload into memory in one piece: a hostile shard could
            # claim gigabytes. (``_proc_member`` is tarfile's internal dispatch for every header.)
            if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
                raise _INVALID_HEADER(
                    f"extended header of {self.size} bytes, over the limit of {MAX_EXTENDED_HEADER_BYTES}"
                )
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return _TrackingTarInfo


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
    attached to the error as ``pending``. Compressed tars are accepted.
    """
    ending: list[BaseException] = []
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_tracking_tarinfo(ending)) as archive:
            for member in archive:
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
                    current = Sample(key)
                current.members.append((member.name, _read_member(archive, member)))
    except (tarfile.TarError, EOFError) as exc:
        raise TarReadError(_damage_message(source, current, str(exc)), pending=current) from exc
    problem = _end_problem(ending)
    if problem is not None:
        raise TarReadError(_damage_message(source, current, problem), pending=current)
    if current is not None:
        yield current


def _member_problem(member: tarfile.TarInfo, max_member_bytes: int | None) -> TarProblem | None:
    key = split_member_name(member.name)[0]
    reason = _problem_reason(member)
    if reason is not None:
        return TarProblem(member.name, reason, key)
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


def write_tar(samples: Iterable[Sample], fileobj: IO[bytes]) -> None:
    """Write samples as a tar, members in the given order, deterministically.

    Every member is a regular file with mtime 0, uid/gid 0, empty owner names and mode 0644, in POSIX
    (pax) format: plain ustar headers, plus a pax record only for names ustar cannot hold. The same
    samples always give the same bytes. Raises ``ValueError`` for unsafe names, members whose key
    differs from their sample's, or consecutive samples with the same key.
    """
    previous_key: str | None = None
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as archive:
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
