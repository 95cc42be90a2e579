"""A local copy of object-store files and folders (pre-staged model weights on a cluster).

Each URI is downloaded once per machine into ``<cache>/<sha256 of the URI>/<last URI part>``. The
download goes to a private temporary folder that is renamed into place only when complete, with a
completion marker inside; a lock file makes concurrent workers on one machine wait for the first
download instead of repeating it. Once the marker exists, later calls touch no network at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec

from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, basename, filesystem, is_local, redact
from raypipe.logs import get_logger

logger = get_logger(__name__)

CACHE_ENV = "RAYPIPE_CACHE"
MARKER = ".raypipe-complete.json"


def default_cache_dir() -> str:
    """``$RAYPIPE_CACHE``, else ``~/.cache/raypipe/models``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "raypipe", "models")


def cache_key(uri: str, options: StorageOptions | None = None) -> str:
    """sha256 of the URI (and the endpoint, so two S3 services never share an entry)."""
    endpoint = (options or StorageOptions()).resolve().endpoint_url or ""
    text = uri.rstrip("/") if not endpoint else f"{uri.rstrip('/')}\n{endpoint}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def materialize(uri: str, cache_dir: str | None = None, options: StorageOptions | None = None) -> str:
    """A local path holding the content of ``uri`` (a file, or a folder prefix).

    Local paths and ``file://`` URIs are returned as local paths without copying (``FileNotFoundError``
    if missing). Object-store URIs are downloaded on first use; the returned path ends with the URI's
    last part.
    """
    if is_local(uri):
        _, path = filesystem(uri)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{uri}: no such file or folder")
        return uri if "://" not in uri else path
    name = basename(uri)
    if not name:
        raise ValueError(f"{redact(uri)}: cannot cache a bucket root; name a file or folder inside it")
    root = cache_dir or default_cache_dir()
    entry = os.path.join(root, cache_key(uri, options))
    target = os.path.join(entry, name)
    if _complete(entry):
        return target
    os.makedirs(root, exist_ok=True)
    with _exclusive(entry + ".lock"):
        if _complete(entry):  # another worker finished while we waited
            return target
        _download_entry(uri, options, root, entry, name)
    return target


def _complete(entry: str) -> bool:
    return os.path.isfile(os.path.join(entry, MARKER))


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): temp folder + rename still keeps it safe
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download_entry(uri: str, options: StorageOptions | None, root: str, entry: str, name: str) -> None:
    fs, path = filesystem(uri, options)
    staging = tempfile.mkdtemp(dir=root, prefix=f".{os.path.basename(entry)}.", suffix=".partial")
    try:
        files = _download(fs, path, uri, os.path.join(staging, name))
        marker = {"uri": redact(uri), "files": len(files), "bytes": sum(files.values())}
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
            json.dump(marker, handle)
        if os.path.isdir(entry):  # an entry without marker was not made by us (e.g. copied by hand)
            shutil.rmtree(entry)
        os.rename(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("cached %s (%d files, %d bytes) in %s", redact(uri), marker["files"], marker["bytes"], entry)


def _download(fs: fsspec.AbstractFileSystem, path: str, uri: str, local: str) -> dict[str, int]:
    """Copy a file or every file under a folder prefix to ``local``; returns {relative path: size}."""
    info = _info_or_none(fs, path)
    if info is not None and info.get("type") == "file":
        retry(lambda: fs.get_file(path, local), description=f"download {redact(uri)}")
        return {posixpath.basename(path): os.path.getsize(local)}
    prefix = path.rstrip("/")
    remote = retry(lambda: fs.find(prefix, detail=True), description=f"list {redact(uri)}")
    files: dict[str, int] = {}
    for remote_path, remote_info in sorted(remote.items()):
        if remote_info.get("type") != "file":
            continue
        relative = posixpath.relpath(fs._strip_protocol(remote_path), prefix)
        if relative.startswith("../") or relative in ("..", ".") or relative.startswith("/"):
            raise ValueError(f"{redact(uri)}: refusing to cache object {remote_path!r} outside the prefix")
        destination = os.path.join(local, *relative.split("/"))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        retry(functools.partial(fs.get_file, remote_path, destination), description=f"download {remote_path}")
        files[relative] = os.path.getsize(destination)
    if not files:
        raise FileNotFoundError(f"{redact(uri)}: no such object or folder prefix")
    return files


def _info_or_none(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return retry(lambda: fs.info(path), description=f"stat {path}")
    except FileNotFoundError:
        return None
