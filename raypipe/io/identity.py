"""The identity of a stored object: what pins an input shard without reading it.

On object stores it is the object's size and ETag (generation on GCS); on local disks the size and the
modification time in nanoseconds. Either changes when the object is replaced, so a resume can tell
that an input shard is no longer the one its committed work was read from. The sha256 of the whole
shard, computed as it is read, is recorded next to it in the completion marker.
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any

from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, filesystem, redact

# Keys under which fsspec implementations report an object's version (s3fs, gcsfs, adlfs).
VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash")


def object_identity(uri: str, options: StorageOptions) -> dict[str, Any]:
    """``{"uri", "size", "etag" | "mtime_ns"}`` of the object at ``uri`` (one metadata request); of a group
    of files, a digest of its folder's listing as its ETag (:func:`raypipe.io.filetrees.group_identity`)."""
    from raypipe.io.filetrees import group_identity, is_files_group  # filetrees imports this module

    if is_files_group(uri):
        return group_identity(uri, options)
    fs, path = filesystem(uri, options)
    identity: dict[str, Any] = {"uri": redact(uri)}
    if fs.protocol in ("file", "local") or "file" in tuple(fs.protocol):
        stat = os.stat(fs._strip_protocol(path))
        return identity | {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fs.invalidate_cache(path)
    info = retry(lambda: fs.info(path), description=f"stat {path}")
    identity["size"] = int(info.get("size") or 0)
    version = version_of(info)
    if version is not None:
        identity["etag"] = version
    return identity


def version_of(info: dict[str, Any], keys: tuple[str, ...] = VERSION_KEYS) -> str | None:
    """The version an fsspec listing or ``info`` entry reports for an object (ETag, generation), if any."""
    for name in keys:
        if info.get(name):
            return str(info[name]).strip('"')
    return None


def same_object(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when two identities name the same version of an object (the sha256 is not compared)."""
    names = ("size", "etag", "mtime_ns")
    return all(recorded.get(name) == current.get(name) for name in names)


class HashingReader:
    """A read-only stream wrapper that hashes what passes through (sha256), so a file is read once."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        """Read to the end; the sha256 hex of everything read through this wrapper."""
        while self.read(8 * 2**20):
            pass
        return self.digest.hexdigest()


class HashingWriter:
    """A write-only stream wrapper that hashes (sha256) and counts what passes through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self._handle.write(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()
