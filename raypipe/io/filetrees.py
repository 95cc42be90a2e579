"""Folders of files as shards (``input_format: files``).

A tree of files under INPUT is cut into groups, one per folder: a group holds the files directly
inside that folder, and it is the unit of reading, commit, output and audit, as a tar is. Inside a
group, files are samples by the WebDataset rule: the key is a file's name up to its first dot
(``cat.jpg`` and ``cat.json`` are one sample, with members ``cat.jpg`` and ``cat.json``). Every file is
a member: images are anonymized, every other file is copied byte for byte. OUTPUT mirrors the tree:
the released files of the group of ``INPUT/a/b`` are written to ``OUTPUT/a/b`` under the same names.

A group is named for its folder relative to INPUT, quoted so that it is one file name
(``a/b`` -> ``a%2Fb.files``, INPUT itself -> ``%2E.files``); its URI is ``<INPUT>#<name>``. Names
that start with a dot (files and folders) are left out, as the dataset readers leave them out: OUTPUT
keeps its own state in ``.raypipe/``.

A group is pinned by a digest of its listing (each file's name, size and ETag or modification time),
kept where an object's ETag is kept (:func:`raypipe.io.identity.object_identity`), so a file added,
removed or replaced changes the group's identity. Its content hash is a digest of each file's name and
sha256 (:func:`listing_digest`), for the input as read and for the output as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raypipe.io.identity import VERSION_KEYS, HashingReader, version_of
from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, filesystem, join, redact, to_uri
from raypipe.logs import get_logger

log = get_logger(__name__)

FILES_SUFFIX = ".files"
_ROOT = "%2E"  # the quoted name of INPUT's own group: no folder quotes to it ("." is never listed)
_SEPARATOR = "#"  # between INPUT and a group's name in the group's URI (a name holds no "#": quoted)
_VERSION_KEYS = (*VERSION_KEYS, "mtime")  # a local file has no ETag: its modification time
# A group's name is part of its state files' names (``<name>.audit.parquet``): 255 bytes at most on
# common filesystems, less what raypipe adds.
MAX_GROUP_NAME_BYTES = 200
# A file is written through a temporary file beside it named ``.<name>.XXXXXXXX.tmp``, 14 bytes longer.
MAX_FILE_NAME_BYTES = 240


class FileTreeError(ValueError):
    """A folder given as a tree of files cannot be read as one."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a group: its name in the folder, its size, and its version (ETag or mtime)."""

    name: str
    size: int
    version: str


def is_files_group(name_or_uri: str) -> bool:
    """Whether a shard name (or URI) is a group of files."""
    return name_or_uri.endswith(FILES_SUFFIX)


def group_name(folder: str) -> str:
    """The group of ``folder`` (relative to INPUT, ``""`` for INPUT itself): ``a/b`` -> ``a%2Fb.files``."""
    return (quote(folder, safe="") if folder else _ROOT) + FILES_SUFFIX


def plain_name(name: str) -> bool:
    """Whether a file or folder name can be carried into the audit and written back as it is: UTF-8,
    with no control character and no backslash."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(char) < 0x20 or char == "\\" for char in name)


def group_folder(name: str) -> str:
    """The folder (relative to INPUT or OUTPUT) a group's name stands for; the inverse of :func:`group_name`.

    Raises :class:`FileTreeError` for a name no listing gives (an empty, hidden, ``.`` or ``..`` part),
    so a planted name cannot point outside OUTPUT.
    """
    if not name.endswith(FILES_SUFFIX):
        raise FileTreeError(f"{name!r} is not the name of a group of files")
    quoted = name[: -len(FILES_SUFFIX)]
    if quoted == _ROOT:
        return ""
    try:
        folder = unquote(quoted, errors="strict")
    except UnicodeDecodeError:
        raise FileTreeError(f"{name!r} does not name a folder a listing gives") from None
    if (
        quote(folder, safe="") != quoted
        or any(not part or part.startswith(".") for part in folder.split("/"))
        or not plain_name(folder)
    ):
        raise FileTreeError(f"{name!r} does not name a folder a listing gives")
    return folder


def group_uri(root: str, folder: str) -> str:
    """The URI of the group of ``folder`` under the INPUT folder ``root``."""
    return f"{root.rstrip('/')}{_SEPARATOR}{group_name(folder)}"


def split_group(uri: str) -> tuple[str, str]:
    """``(INPUT root, group name)`` of a group's URI."""
    root, separator, name = uri.rpartition(_SEPARATOR)
    if not separator or not name.endswith(FILES_SUFFIX):
        raise FileTreeError(f"{redact(uri)} is not the URI of a group of files")
    return root, name


def group_shard_name(uri: str) -> str:
    return split_group(uri)[1]


def folder_uri(uri: str) -> str:
    """The folder a group's URI stands for (where its files are)."""
    root, name = split_group(uri)
    return join(root, group_folder(name))


def list_groups(
    fs: fsspec.AbstractFileSystem, scheme: str | None, root: str, refuse: tuple[str, ...] = ()
) -> list[str]:
    """Every group of the tree under the folder ``root`` (a path on ``fs``): the URIs of the folders
    that hold at least one file, sorted; names that start with a dot, and what is under them, left out.

    Raises :class:`FileTreeError` for a name raypipe cannot carry into its audit and state (not UTF-8,
    control characters, a group name too long for a file name), naming it, and for a file whose name
    ends with one of ``refuse`` (shards, which would be copied as they are). Links are not followed:
    they are left out, and said so.
    """
    top = fs._strip_protocol(root).rstrip("/")
    if isinstance(fs, LocalFileSystem):
        found = _local_tree(top)
    else:
        found = retry(lambda: fs.find(top, withdirs=False, detail=True), description=f"list {redact(root)}")
    folders: set[str] = set()
    links: list[str] = []
    refused: list[str] = []
    seen: dict[str, str] = {}  # names as a case-insensitive, normalizing filesystem sees them
    for path, info in found.items():
        relative = fs._strip_protocol(path)[len(top) + 1 :]
        if not relative or _hidden(relative):
            continue
        if not _a_file(info, path):
            if info.get("type") not in ("directory", "file"):
                links.append(relative)
            continue
        _check_name(relative, root)
        if refuse and relative.endswith(refuse):
            refused.append(relative)
        for name in (relative, posixpath.dirname(relative)):
            folded = unicodedata.normalize("NFC", name).lower()  # as NTFS and APFS compare names
            if seen.setdefault(folded, name) != name:
                raise FileTreeError(
                    f"{redact(root)}: {seen[folded]!r} and {name!r} differ only by case or Unicode normalization;"
                    " they would be one on many filesystems (macOS, Windows): rename one"
                )
        folders.add(posixpath.dirname(relative))
    if refused:
        raise FileTreeError(
            f"the folder {redact(root)} holds shards in subfolders ({min(refused)!r}, ...): name them"
            f" ({redact(root)}/*/*.tar), or read the tree as files with --input-format files"
        )
    if links:
        log.warning(
            "%s: %d link(s) or special file(s) in the tree are not read and not copied (%s%s)",
            redact(root),
            len(links),
            ", ".join(repr(name) for name in sorted(links)[:3]),
            ", ..." if len(links) > 3 else "",
        )
    base = to_uri(scheme, fs, top)
    return [group_uri(base, folder) for folder in sorted(folders)]


def _local_tree(top: str) -> dict[str, dict[str, Any]]:
    """Every entry under a local folder but folders, as ``fs.find(detail=True)`` gives them (links as
    ``other``, not followed); a folder that cannot be read is an error, never left out."""

    def unreadable(error: OSError) -> None:
        raise FileTreeError(f"{error.filename}: cannot be listed ({error.strerror}); nothing of the tree is read")

    found: dict[str, dict[str, Any]] = {}
    for folder, folders, files in os.walk(top, onerror=unreadable):
        for name in [*files, *(f for f in folders if os.path.islink(os.path.join(folder, f)))]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            kind = "file" if stat.S_ISREG(info.st_mode) else "other"
            found[path] = {"name": path, "type": kind, "size": info.st_size}
    return found


def _check_name(relative: str, root: str) -> None:
    """Refuse, naming it, a name that is not a :func:`plain_name` or too long to write."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise FileTreeError(f"{redact(root)}: {relative!r} is not a UTF-8 name; rename it") from None
    if not plain_name(relative):
        raise FileTreeError(f"{redact(root)}: {relative!r} holds a control character or a backslash; rename it")
    base = posixpath.basename(relative)
    if len(base.encode()) > MAX_FILE_NAME_BYTES:
        raise FileTreeError(
            f"{redact(root)}: the name of {relative!r} is {len(base.encode())} bytes, over the {MAX_FILE_NAME_BYTES}"
            " raypipe can write (it writes each file through a temporary file beside it); shorten it"
        )
    name = group_name(posixpath.dirname(relative))
    if len(name.encode()) > MAX_GROUP_NAME_BYTES:
        raise FileTreeError(
            f"{redact(root)}: the folder of {relative!r} is named {name[:40]}... as a group, {len(name.encode())}"
            f" bytes, over the {MAX_GROUP_NAME_BYTES} its state files' names can take; shorten the folder's path"
        )


def group_files(uri: str, options: StorageOptions) -> list[FileEntry]:
    """The files of a group, sorted by sample key, then by name (one listing of its folder)."""
    fs, path = filesystem(folder_uri(uri), options)
    return [
        FileEntry(name=name, size=int(entry.get("size") or 0), version=_version(entry))
        for name, entry in _listing(fs, path)
    ]


def _listing(fs: fsspec.AbstractFileSystem, folder: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, entry)`` of the files directly in ``folder`` (none when it is not a folder), names that
    start with a dot left out, sorted by sample key, then name. Only entries under ``folder/`` count:
    listing a file gives the file itself, and S3 answers a prefix with nothing under it so."""
    folder = folder.rstrip("/")
    fs.invalidate_cache(folder)
    try:
        entries = retry(lambda: fs.ls(folder, detail=True), description=f"list {redact(folder)}")
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        path = fs._strip_protocol(entry["name"])
        if _a_file(entry, entry["name"]) and posixpath.dirname(path) == folder:
            name = posixpath.basename(path)
            if not name.startswith("."):
                found.append((name, entry))
    return sorted(found, key=lambda item: (sample_key(item[0]), item[0]))


def group_identity(uri: str, options: StorageOptions, files: list[FileEntry] | None = None) -> dict[str, Any]:
    """``{"uri", "size", "files", "etag"}`` of a group (listed now, or as ``files``): its ETag is a
    digest of its listing."""
    files = group_files(uri, options) if files is None else files
    listing = json.dumps([[f.name, f.size, f.version] for f in files], separators=(",", ":"))
    return {
        "uri": redact(uri),
        "files": len(files),
        "size": sum(f.size for f in files),
        "etag": "listing-" + hashlib.sha256(listing.encode()).hexdigest(),
    }


def sample_key(name: str) -> str:
    """The WebDataset key of a file name: the name up to its first dot."""
    return name.split(".", 1)[0]


def file_of_sample(name: str, key: str) -> bool:
    """Whether ``name`` is a file name a listing gives for a member of the sample ``key``: one part, not
    hidden, a :func:`plain_name`, short enough to be written, and of that key."""
    return (
        plain_name(name)
        and 0 < len(name.encode("utf-8")) <= MAX_FILE_NAME_BYTES
        and "/" not in name
        and not name.startswith(".")
        and sample_key(name) == key
    )


def samples_of(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """File names grouped into samples, ``(key, names)``, in key order (names sorted in each)."""
    samples: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: (sample_key(n), n)):
        samples.setdefault(sample_key(name), []).append(name)
    return list(samples.items())


def listing_digest(files: Iterable[tuple[str, str]]) -> str:
    """The content hash of a group: sha256 over its files' ``(name, sha256)``, sorted by name."""
    pairs = sorted(files)
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def folder_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[tuple[str, str]]:
    """``(name, path)`` of the files directly in ``folder`` (a path on ``fs``), as :func:`group_files`
    lists them: a group's output."""
    return [(name, fs._strip_protocol(entry["name"])) for name, entry in _listing(fs, folder)]


def file_digest(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """sha256 hex of one file, streamed."""
    with retry(lambda: fs.open(path, "rb"), description=f"open {path}") as handle:
        return HashingReader(handle).drain()


def group_content(uri: str, options: StorageOptions) -> str:
    """The content hash of a group of input files as it is now (every file read once)."""
    fs, folder = filesystem(folder_uri(uri), options)
    return listing_digest((f.name, file_digest(fs, posixpath.join(folder, f.name))) for f in group_files(uri, options))


def _a_file(info: dict[str, Any], path: str) -> bool:
    """A file of a tree: not a folder, nor the empty ``folder/`` object S3 consoles create for one."""
    return info.get("type") == "file" and not path.endswith("/")


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _version(entry: dict[str, Any]) -> str:
    return version_of(entry, _VERSION_KEYS) or ""
