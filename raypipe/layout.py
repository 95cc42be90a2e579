"""Where everything of a run lives under OUTPUT (used by the job, ``status`` and ``audit verify``).

```
OUTPUT/<shard>.tar                              anonymized shard, same name as the input shard (or <shard>.parquet)
OUTPUT/<folder>/<file>                          a released file of a tree of files, same place as in INPUT
OUTPUT/.raypipe/shards/<shard>.audit.parquet    one audit record per input sample
OUTPUT/.raypipe/shards/<shard>.done.json        completion marker, written last: hashes and counts
OUTPUT/.raypipe/job.json                        the configuration hash this OUTPUT holds results of
OUTPUT/.raypipe/config.yaml                     the resolved job configuration
OUTPUT/.raypipe/lease.json                      the lease of the run writing here now
OUTPUT/.raypipe/manifest.json                   the signed manifest: every finalized shard's evidence
OUTPUT/.raypipe/manifests/<n>.json              the signed history: every earlier manifest, by sequence number
OUTPUT/.raypipe/runs/<run id>.json              what each run did (plan, counts, timings)
OUTPUT/.raypipe/fragments/<shard>/              committed work of shards not yet finalized
```
Only the anonymized tars sit at the top of OUTPUT, so OUTPUT is a dataset its readers open as it is:
``webdataset``, ``ray.data.read_webdataset(OUTPUT)`` and ``datasets.load_dataset("webdataset",
data_dir=OUTPUT)`` all skip a folder whose name starts with a dot. (An OUTPUT written by raypipe
with the earlier layout keeps its state in ``_raypipe/`` and sidecars beside the tars: see
:func:`legacy_state`.)

Readers trust only completion markers and the manifest, never a listing of whatever exists. The names
of the files under ``.raypipe/`` are defined here; the modules that write them use them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raypipe.io.filetrees import file_digest, folder_files, group_folder, is_files_group, listing_digest, sample_key
from raypipe.io.publish import delete, exists, is_local, read_bytes
from raypipe.io.storage import StorageOptions, filesystem, join
from raypipe.io.tables import is_table_shard

STATE_DIR = ".raypipe"
SHARDS_DIR = "shards"  # under STATE_DIR: every finalized shard's audit and completion marker
LEGACY_STATE_DIR = "_raypipe"  # the earlier layout kept its state here
AUDIT_SUFFIX = ".audit.parquet"
DONE_SUFFIX = ".done.json"
JOB_FILE = "job.json"
CONFIG_FILE = "config.yaml"
LEASE_FILE = "lease.json"
MANIFEST_FILE = "manifest.json"
HISTORY_DIR = "manifests"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class OutputLayout:
    root: str  # OUTPUT as the user gave it (path or URI)
    options: StorageOptions = field(default_factory=StorageOptions)

    @property
    def fs(self) -> Any:
        return filesystem(self.root, self.options)[0]

    def path(self, *parts: str) -> str:
        """A path inside OUTPUT, in the form the filesystem expects (no scheme for fsspec calls)."""
        return filesystem(join(self.root, *parts), self.options)[1]

    def tar(self, shard: str) -> str:
        return self.path(shard)

    def folder(self, group: str) -> str:
        """Where the released files of a group of files are (:mod:`raypipe.io.filetrees`)."""
        return self.path(group_folder(group))

    def audit(self, shard: str) -> str:
        return self.path(audit_name(shard))

    def done(self, shard: str) -> str:
        return self.path(done_name(shard))

    def markers(self) -> str:
        """The folder of every shard's audit and completion marker."""
        return self.path(STATE_DIR, SHARDS_DIR)

    def fragments(self, shard: str) -> str:
        return self.path(STATE_DIR, "fragments", shard_stem(shard))

    def state(self, name: str) -> str:
        return self.path(STATE_DIR, name)

    def read_marker(self, shard: str) -> dict[str, Any] | None:
        """A shard's completion marker, or None while the shard is not finalized."""
        path = self.done(shard)
        if not exists(self.fs, path):
            return None
        try:
            value = json.loads(read_bytes(self.fs, path))  # a marker is small and flat; raypipe wrote it
        except RecursionError:
            raise ValueError(f"{shard}: the completion marker is nested too deeply") from None
        if not isinstance(value, dict):
            raise ValueError(f"{shard}: the completion marker is not a JSON object")
        return value


class LinkedOutputError(ValueError):
    """A folder of OUTPUT that a group of files is written to is (or lies under) a symbolic link."""


def linked_part(layout: OutputLayout, path: str) -> str | None:
    """The first part of ``path`` under OUTPUT that is a symbolic link (local OUTPUT only), else None.
    Writing a group's files through one would write (and delete) outside OUTPUT."""
    if not is_local(layout.fs):
        return None
    root = layout.path().rstrip("/")
    current = root
    for part in [p for p in path[len(root) :].split("/") if p]:
        current = f"{current}/{part}"
        if os.path.islink(current):
            return current
    return None


def group_folder_of(layout: OutputLayout, shard: str) -> str:
    """Where a group of files is written under OUTPUT; raises :class:`LinkedOutputError` when that is
    through a symbolic link."""
    folder = layout.folder(shard)
    link = linked_part(layout, folder)
    if link is not None:
        raise LinkedOutputError(
            f"{shard}: {link} is a symbolic link; raypipe writes a group's files only inside OUTPUT"
        )
    return folder


def output_files(layout: OutputLayout, shard: str) -> list[tuple[str, str]]:
    """``(name, path)`` of what a shard's output is: its tar (or table), or every file in a group's folder."""
    if is_files_group(shard):
        return folder_files(layout.fs, group_folder_of(layout, shard))
    return [(shard, layout.tar(shard))]


def output_sha256(layout: OutputLayout, shard: str) -> str:
    """The content hash of a shard's output as it is stored: the sha256 of its tar (or table), or of
    a group of files, the digest of the names and sha256 of the files of its audit's samples
    (:func:`raypipe.io.filetrees.listing_digest`; any other file in its folder is not its output)."""
    if not is_files_group(shard):
        return file_digest(layout.fs, layout.tar(shard))
    group_folder_of(layout, shard)  # a linked folder has no digest: LinkedOutputError
    return listing_digest((name, file_digest(layout.fs, path)) for name, path in _group_outputs(layout, shard))


def delete_output(layout: OutputLayout, shard: str) -> None:
    """Remove a shard's output, its audit and its completion marker. Of a group of files only the files
    of the samples its audit records are removed (nothing else in its folder, and nothing through a link)."""
    outputs = [path for _, path in _group_outputs(layout, shard)] if is_files_group(shard) else [layout.tar(shard)]
    for path in [layout.done(shard), *outputs, layout.audit(shard)]:
        delete(layout.fs, path)


def _group_outputs(layout: OutputLayout, shard: str) -> list[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        audit = pq.read_table(io.BytesIO(read_bytes(layout.fs, layout.audit(shard))), columns=["key"])
        keys = {str(key) for key in audit.column("key").to_pylist()}
        return [(name, path) for name, path in output_files(layout, shard) if sample_key(name) in keys]
    except (OSError, ValueError, pa.ArrowException):  # no readable audit, or a linked folder: the folder is left
        return []


def shard_stem(shard: str) -> str:
    """``data-00001.tar`` -> ``data-00001``; a Parquet shard or a group of files keeps its suffix
    (``part-0.parquet``, ``a%2Fb.files``)."""
    return shard[: -len(".tar")] if shard.endswith(".tar") else shard


def shard_of_stem(stem: str) -> str:
    """The shard a stem (of a marker, an audit or a fragments folder) belongs to: the inverse of
    :func:`shard_stem` for every name :func:`stems_uniquely` accepts."""
    return stem if is_table_shard(stem) or is_files_group(stem) else f"{stem}.tar"


def stems_uniquely(shard: str) -> bool:
    """Whether ``shard`` is named so that its stem leads back to it (``x.parquet.tar`` does not)."""
    return shard_of_stem(shard_stem(shard)) == shard


def audit_name(shard: str) -> str:
    """A shard's audit, relative to OUTPUT: ``.raypipe/shards/data-00001.audit.parquet``."""
    return f"{STATE_DIR}/{SHARDS_DIR}/{shard_stem(shard)}{AUDIT_SUFFIX}"


def done_name(shard: str) -> str:
    """A shard's completion marker, relative to OUTPUT: ``.raypipe/shards/data-00001.done.json``."""
    return f"{STATE_DIR}/{SHARDS_DIR}/{shard_stem(shard)}{DONE_SUFFIX}"


def legacy_state(layout: OutputLayout) -> str | None:
    """``OUTPUT/_raypipe`` when OUTPUT was written with the earlier layout (sidecars beside the tars, not under
    ``.raypipe/``), else None. Such an OUTPUT is refused, never mixed with the current layout."""
    legacy = layout.path(LEGACY_STATE_DIR, JOB_FILE)
    if exists(layout.fs, legacy) and not exists(layout.fs, layout.state(JOB_FILE)):
        return f"{LEGACY_STATE_DIR}/{JOB_FILE}"
    return None


@dataclass
class Tally:
    """What the completion markers of some shards say: which are done, and samples per status."""

    done: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def tally_from(names: list[str], lookup: Callable[[str], dict[str, Any] | None]) -> Tally:
    """Done shards and samples per status, from whatever ``lookup`` gives per shard (a completion
    marker or a manifest entry, both with ``counts``; None: not done)."""
    result = Tally()
    for name in names:
        marker = lookup(name)
        if marker is None:
            result.incomplete.append(name)
            continue
        result.done.append(name)
        for status, n in marker["counts"].items():
            result.counts[status] = result.counts.get(status, 0) + n
    result.counts = dict(sorted(result.counts.items()))
    return result
