"""Input shard listing: brace patterns and globs -> a sorted list of ``.tar`` (or ``.parquet``) URIs.

A shard is a WebDataset tar or a Parquet table (:mod:`raypipe.io.tables`), told apart by its suffix.
``input_format`` says which kinds a spec may match: ``webdataset`` (tars), ``parquet`` (tables) or
``auto``: a spec whose matches include tars stands for its tars only (img2dataset writes a ``.parquet``
of metadata beside every tar), otherwise for its tables.

Brace patterns follow the WebDataset/shell convention: ``data-{00000..00099}.tar`` (numeric range,
zero padding kept), ``{train,val}/part-*.tar`` (alternatives), nested and repeated groups. Names a
brace pattern spells out without glob characters must exist; glob characters (``*``, ``?``,
``[...]``) are resolved by the filesystem's ``glob``.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Sequence

import fsspec

from raypipe.io.filetrees import FileTreeError, group_shard_name, is_files_group, list_groups
from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, basename, filesystem, protocol_of, redact, to_uri
from raypipe.io.tables import PARQUET_SUFFIX
from raypipe.logs import get_logger

logger = get_logger(__name__)

SHARD_SUFFIX = ".tar"
INPUT_FORMATS = ("auto", "webdataset", "parquet", "files")
_SUFFIXES = {
    "auto": (SHARD_SUFFIX, PARQUET_SUFFIX),
    "webdataset": (SHARD_SUFFIX,),
    "parquet": (PARQUET_SUFFIX,),
    "files": (),
}
MAX_EXPANSION = 1_000_000
# Up to this many spelled-out names in one folder are checked one by one; more and the folder is
# listed once instead (a HEAD per shard is slow for thousands of shards).
_SINGLE_CHECK_LIMIT = 8
_MAX_NAMES_IN_MESSAGE = 10

_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_GLOB_CHARS = frozenset("*?[")


class ShardSpecError(ValueError):
    """A shard spec is malformed or matches nothing usable."""


class MissingShardsError(ShardSpecError):
    """Shards spelled out by a brace pattern do not exist. ``missing`` lists every one of them."""

    def __init__(self, spec: str, missing: Sequence[str]) -> None:
        self.spec = spec
        self.missing = list(missing)
        shown = ", ".join(redact(m) for m in self.missing[:_MAX_NAMES_IN_MESSAGE])
        more = len(self.missing) - _MAX_NAMES_IN_MESSAGE
        suffix = f" and {more} more" if more > 0 else ""
        super().__init__(f"{redact(spec)}: {len(self.missing)} shard(s) do not exist: {shown}{suffix}")


def expand_braces(pattern: str) -> list[str]:
    """Expand every ``{...}`` group of ``pattern`` (left to right, nested groups allowed).

    ``{a,b}`` gives alternatives (empty ones allowed, as in the shell); ``{8..11}`` and ``{008..011}``
    give numeric ranges, zero-padded to the wider end when either end has a leading zero.
    Raises :class:`ShardSpecError` for unbalanced braces, empty groups and groups that are neither.
    """
    results = _expand(pattern, pattern)
    if len(results) > MAX_EXPANSION:
        raise ShardSpecError(f"{pattern!r} expands to more than {MAX_EXPANSION} names")
    return results


def _expand(text: str, whole: str) -> list[str]:
    start = _find_open(text, whole)
    if start is None:
        return [text]
    end = _matching_close(text, start, whole)
    prefix, body, suffix = text[:start], text[start + 1 : end], text[end + 1 :]
    choices = _group_choices(body, whole)
    tails = _expand(suffix, whole)
    if len(choices) * len(tails) > MAX_EXPANSION:
        raise ShardSpecError(f"{whole!r} expands to more than {MAX_EXPANSION} names")
    return [prefix + choice + tail for choice in choices for tail in tails]


def _find_open(text: str, whole: str) -> int | None:
    for i, char in enumerate(text):
        if char == "{":
            return i
        if char == "}":
            raise ShardSpecError(f"{whole!r}: '}}' without a matching '{{'")
    return None


def _matching_close(text: str, start: int, whole: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ShardSpecError(f"{whole!r}: '{{' without a matching '}}'")


def _group_choices(body: str, whole: str) -> list[str]:
    alternatives = _split_top_level(body)
    if len(alternatives) > 1:
        return [name for alt in alternatives for name in _expand(alt, whole)]
    match = _RANGE.match(body)
    if match is None:
        raise ShardSpecError(
            f"{whole!r}: brace group {{{body}}} is neither a list like {{a,b}} nor a numeric range "
            "like {00000..00099}"
        )
    return _numeric_range(match.group(1), match.group(2), whole)


def _split_top_level(body: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return parts


def _numeric_range(first: str, last: str, whole: str) -> list[str]:
    lo, hi = int(first), int(last)
    padded = any(len(end) > 1 and end.startswith("0") for end in (first, last))
    width = max(len(first), len(last)) if padded else 0
    step = 1 if hi >= lo else -1
    if abs(hi - lo) + 1 > MAX_EXPANSION:
        raise ShardSpecError(f"{whole!r}: range {first}..{last} has more than {MAX_EXPANSION} values")
    return [str(n).zfill(width) for n in range(lo, hi + step, step)]


def has_glob(text: str) -> bool:
    """True when ``text`` contains a glob character (``*``, ``?``, ``[``)."""
    return any(char in _GLOB_CHARS for char in text)


def expand_shards(
    spec: str | Sequence[str], options: StorageOptions | None = None, input_format: str = "auto"
) -> list[str]:
    """List the shards named by one spec or several: full URIs, sorted, without duplicates.

    Remote shards keep their scheme (``s3://bucket/a.tar``); local shards come back as absolute paths.
    Raises :class:`MissingShardsError` when spelled-out names do not exist, and
    :class:`ShardSpecError` when a spec is malformed or matches no shard of ``input_format``.
    """
    if input_format not in INPUT_FORMATS:
        raise ShardSpecError(f"input format {input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ShardSpecError("no input shards given")
    found: set[str] = set()
    for one in specs:
        found.update(_expand_spec(one, options or StorageOptions(), input_format))
    shards = sorted(found)
    logger.info("planned %d input shard(s) from %d spec(s)", len(shards), len(specs))
    return shards


def shard_name(uri: str) -> str:
    """The shard's file name (the output shard has the same name), or a group of files' name."""
    return group_shard_name(uri) if is_files_group(uri) else basename(uri)


def _expand_spec(spec: str, options: StorageOptions, input_format: str) -> list[str]:
    suffixes = _SUFFIXES[input_format]
    by_protocol: dict[str | None, list[str]] = defaultdict(list)
    for name in expand_braces(spec):
        by_protocol[protocol_of(name)].append(name)
    named: list[str] = []  # spelled out: always read
    listed: list[str] = []  # found in a folder or by a glob
    missing: list[str] = []
    for scheme, names in by_protocol.items():
        fs, _ = filesystem(names[0], options)
        fs.invalidate_cache()  # a listing cached earlier in this process may be stale
        literal = [n for n in names if not has_glob(n)]
        folders = [n for n in literal if not n.endswith(suffixes)]
        for name in folders:
            listed.extend(_folder_shards(fs, scheme, spec, name, input_format))
        present, absent = _check_exist(fs, scheme, [n for n in literal if n.endswith(suffixes)])
        named.extend(present)
        missing.extend(absent)
        for name in names:
            if has_glob(name) and input_format == "files":
                raise ShardSpecError(f"{redact(spec)}: with input format files, INPUT names folders, not globs")
            if has_glob(name):
                listed.extend(_glob(fs, scheme, name, suffixes))
    if missing:
        raise MissingShardsError(spec, missing)
    if not named and not listed:
        raise ShardSpecError(f"{redact(spec)} matches no {_kinds(suffixes) or 'folders of'} shards")
    return named + (_one_kind(spec, listed) if input_format == "auto" else listed)


def _kinds(suffixes: tuple[str, ...]) -> str:
    return " or ".join(suffixes)


def _one_kind(spec: str, shards: list[str]) -> list[str]:
    """With ``auto``: the tars a spec matches when it matches any, else its tables."""
    tars = [s for s in shards if s.endswith(SHARD_SUFFIX)]
    if tars and len(tars) < len(shards):
        logger.info(
            "%s: reading its %d tar(s) and not the %d %s file(s) beside them (--input-format parquet reads those)",
            redact(spec),
            len(tars),
            len(shards) - len(tars),
            PARQUET_SUFFIX,
        )
    return tars or shards


def _folder_shards(
    fs: fsspec.AbstractFileSystem, scheme: str | None, spec: str, name: str, input_format: str
) -> list[str]:
    """A folder (or prefix) named as INPUT stands for every shard directly inside it, sorted; with
    ``files`` (or ``auto``, for a folder that holds no shards), for the groups of its tree of files."""
    suffixes = _SUFFIXES[input_format]
    path = fs._strip_protocol(name).rstrip("/")
    if not retry(lambda: fs.isdir(path), description=f"stat {redact(name)}"):
        what = (
            "does not exist" if not retry(lambda: fs.exists(path), description=f"stat {redact(name)}") else "is a file"
        )
        kinds = "folders of files" if input_format == "files" else f"{_kinds(suffixes)} shards or folders of them"
        raise ShardSpecError(f"{redact(spec)}: {redact(name)} {what}; INPUT names {kinds}")
    shards: list[str] = []
    if suffixes:
        entries = retry(lambda: fs.ls(path, detail=True), description=f"list {redact(name)}")
        shards = [
            to_uri(scheme, fs, fs._strip_protocol(e["name"]))
            for e in entries
            if e.get("type") == "file" and e["name"].endswith(suffixes) and not basename(e["name"]).startswith(".")
        ]
    if shards:
        return sorted(shards)
    if input_format not in ("files", "auto"):
        raise ShardSpecError(
            f"{redact(spec)}: the folder {redact(name)} holds no {_kinds(suffixes)} shards "
            "(--input-format files reads a folder of image files)"
        )
    nested = (SHARD_SUFFIX, PARQUET_SUFFIX) if input_format == "auto" else ()  # shards would be copied as they are
    try:
        groups = list_groups(fs, scheme, path, refuse=nested)
    except FileTreeError as exc:
        raise ShardSpecError(f"{redact(spec)}: {exc}") from None
    if not groups:
        raise ShardSpecError(f"{redact(spec)}: the folder {redact(name)} holds no files")
    return groups


def _glob(fs: fsspec.AbstractFileSystem, scheme: str | None, name: str, suffixes: tuple[str, ...]) -> list[str]:
    path = fs._strip_protocol(name)
    matches = retry(lambda: fs.glob(path, detail=True), description=f"glob {redact(name)}")
    return [
        to_uri(scheme, fs, found)
        for found, info in matches.items()
        if info.get("type") == "file" and found.endswith(suffixes)
    ]


def _check_exist(fs: fsspec.AbstractFileSystem, scheme: str | None, names: list[str]) -> tuple[list[str], list[str]]:
    """Split spelled-out names into (present, missing), listing each folder at most once."""
    by_parent: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in names:
        path = fs._strip_protocol(name)
        by_parent[posixpath.dirname(path)].append((name, path))
    present: list[str] = []
    missing: list[str] = []
    for parent, entries in by_parent.items():
        files = _files_in(fs, parent) if len(entries) > _SINGLE_CHECK_LIMIT else None
        for name, path in entries:
            exists = path in files if files is not None else _is_file(fs, path)
            if exists:
                present.append(to_uri(scheme, fs, path))
            else:
                missing.append(name)
    return present, missing


def _files_in(fs: fsspec.AbstractFileSystem, parent: str) -> set[str]:
    try:
        entries = retry(lambda: fs.ls(parent, detail=True), description=f"list {parent}")
    except FileNotFoundError:
        return set()
    return {fs._strip_protocol(e["name"]).rstrip("/") for e in entries if e.get("type") == "file"}


def _is_file(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    try:
        info = retry(lambda: fs.info(path), description=f"stat {path}")
    except FileNotFoundError:
        return False
    return info.get("type") == "file"
