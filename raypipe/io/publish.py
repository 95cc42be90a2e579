"""Atomic publishing of complete objects, and the small read helpers that go with it.

A reader must never see a partial object under its final name: locally we write a temporary file in
the same folder and rename it; on object stores we send the complete object in one PUT.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raypipe.io.identity import HashingWriter
from raypipe.io.retry import retry
from raypipe.logs import get_logger

logger = get_logger(__name__)

# s3fs switches to a multipart upload above 2 x chunksize; S3 accepts single PUTs up to 5 GiB.
_S3_SINGLE_PUT_CHUNK = 5 * 2**30
TEMP_SUFFIX = ".tmp"
STREAM_PART_BYTES = 32 * 2**20  # one part of a streamed upload (S3 wants at least 5 MiB, at most 10^4 parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "s3" in protocols


def publish_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make ``data`` appear at ``path`` all at once (never partially), replacing any previous object.

    Local: temporary file in the same folder, flush + fsync, ``os.replace``, folders created as needed.
    Object stores: exactly one ``pipe_file`` of the complete object (a single PUT on S3 up to 5 GiB),
    retried on transient errors (a PUT of the same bytes is idempotent).
    """
    if is_local(fs):
        _publish_local(fs._strip_protocol(path), data)
        return
    kwargs = {"chunksize": _S3_SINGLE_PUT_CHUNK} if _is_s3(fs) else {}
    retry(lambda: fs.pipe_file(path, data, **kwargs), description=f"publish {path}")
    logger.debug("published %d bytes to %s", len(data), path)


def _publish_local(path: str, data: bytes) -> None:
    _replace(_durable_temp(path, data), path)
    logger.debug("published %d bytes to %s", len(data), path)


def _replace(temp_path: str, path: str) -> None:
    """Rename a finished temporary file to ``path`` (durably); the temporary file is gone either way."""
    try:
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    _fsync_folder(os.path.dirname(path) or ".")


def _durable_temp(path: str, data: bytes) -> str:
    """``data`` in a new, fsynced temporary file beside ``path`` (hidden name); returns its path."""
    with _temp_beside(path) as (handle, temp_path):
        handle.write(data)
    return temp_path


@contextlib.contextmanager
def _temp_beside(path: str) -> Iterator[tuple[IO[bytes], str]]:
    """A new temporary file beside ``path`` (hidden name), fsynced when the block ends; removed if it
    raises."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600
            yield handle, temp_path
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise


@contextlib.contextmanager
def publish_stream(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[HashingWriter]:
    """Write an object of any size in pieces; it appears at ``path`` all at once when the block ends,
    and not at all if the block raises. The writer yielded counts and hashes (sha256) the bytes.

    Local: a temporary file beside ``path``, fsynced, then renamed. Object stores: a streamed upload
    that the store completes only when it is closed (a multipart upload on S3, a resumable upload on
    GCS), aborted on error. Memory stays bounded by one upload part, whatever the object's size.
    """
    if is_local(fs):
        local = fs._strip_protocol(path)
        with _temp_beside(local) as (handle, temp_path):
            writer = HashingWriter(handle)
            yield writer
        _replace(temp_path, local)
    else:
        handle = fs.open(path, "wb", block_size=STREAM_PART_BYTES)
        writer = HashingWriter(handle)
        try:
            yield writer
        except BaseException:
            handle.discard()  # aborts the multipart upload: nothing appears
            raise
        handle.close()
        fs.invalidate_cache(path)
    logger.debug("published %d bytes to %s (streamed)", writer.size, path)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable; some filesystems refuse to open folders, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.cache
def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # no race-free way to read it elsewhere; read once and restore
    os.umask(current)
    return current


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if nothing is there; False when something already is.

    Local: ``O_CREAT | O_EXCL`` on a temporary name, then a hard link (which also refuses to replace),
    so the object appears complete or not at all. S3: a conditional PUT (``If-None-Match: *``), which S3
    answers with 412 when the key exists. Other stores: exists-then-write, which is not atomic.
    """
    if is_local(fs):
        return _create_local(fs._strip_protocol(path), data)
    if _is_s3(fs):
        return _create_s3(fs, path, data)
    logger.warning("%s: this store has no conditional write; exclusive creation is best effort", path)
    if exists(fs, path):
        return False
    publish_bytes(fs, path, data)
    return True


def _create_local(path: str, data: bytes) -> bool:
    temp_path = _durable_temp(path, data)
    try:
        os.link(temp_path, path)  # unlike a rename, a link never replaces what is there
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
    _fsync_folder(os.path.dirname(path) or ".")
    return True


def _create_s3(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    bucket, key, _ = fs.split_path(path)  # type: ignore[attr-defined]

    def put() -> bool:
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")  # type: ignore[attr-defined]
        except Exception as exc:  # s3fs maps 412 to a plain OSError/PermissionError; look at the code
            if _is_precondition_failed(exc):
                return False
            raise
        return True

    created = retry(put, description=f"create {path}")
    fs.invalidate_cache(path)
    return created


def _is_precondition_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if error.get("Code") in ("PreconditionFailed", "412") or status == 412:
                return True
        if "PreconditionFailed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The complete content of ``path`` (retried on transient errors)."""
    return retry(lambda: fs.cat_file(path), description=f"read {path}")


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """True when ``path`` exists now (any cached listing is ignored)."""
    fs.invalidate_cache(path)
    return retry(lambda: fs.exists(path), description=f"check {path}")


def delete(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove the object at ``path``; a missing object is fine."""

    def _remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    retry(_remove, description=f"delete {path}")
    fs.invalidate_cache(path)
