"""``raypipe audit verify``: recompute everything the signed manifest commits to and name what differs.

Checks, in order: the manifest's signature; the chain of earlier manifests; for every shard of the
manifest, its tar, audit file and completion marker (present, hashes), its audit records (order,
missing or added records, Merkle root, counts per status), and the tar's content against the audit
(exactly the released samples, in input order, each hashing to its recorded ``output_sha256``); then
the run-wide Merkle root, and files under OUTPUT that the manifest does not know.

Every finding is a :class:`Problem` of one kind:

- ``modified``: content differs from what the manifest (or the audit) commits to;
- ``missing``: a file, record or released sample is gone;
- ``extra``: a file, record or sample is present that the manifest (or the audit) does not list;
- ``reordered``: the same records or samples, in another order;
- ``bad_signature``: the manifest was changed after signing, or the key is not the signing key;
- ``broken_chain``: an earlier manifest does not hash to the next one's ``previous``;
- ``rewritten``: a shard's entry changed along the chain without a recorded reason (``--overwrite``);
- ``rollback``: OUTPUT is older than the checkpoint of ``--anchor``, or not descended from it;
- ``incomplete``: work of an unfinished run (fragments) is present.

Only known names are read: the manifest's shard names must be plain file names, and every file read
must be a regular file (no links, no devices); JSON is bounded in size and depth. What verify can and
cannot prove without an anchor: see the README ("What verify proves").
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raypipe.audit.manifest import (
    ENTRY_FIELDS,
    FORMAT,
    HISTORY_DIR,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    RELEASED_STATUSES,
    audit_rows,
    entries_root,
    iter_history,
    manifest_digest,
    manifest_path,
    parse_json,
    records_root,
    signed_payload,
    status_counts,
)
from raypipe.audit.schema import member_header, sample_digest
from raypipe.audit.signing import Key, describe_mismatch, verify
from raypipe.io.filetrees import (
    FileTreeError,
    folder_files,
    group_content,
    group_folder,
    is_files_group,
    listing_digest,
    plain_name,
    samples_of,
)
from raypipe.io.identity import HashingReader
from raypipe.io.publish import exists, is_local, read_bytes
from raypipe.io.storage import StorageOptions, redact
from raypipe.io.tables import ParquetShardError, is_table_shard, keyed_members, spooled
from raypipe.io.tars import Sample, TarProblem, TarReadError, iter_samples
from raypipe.layout import STATE_DIR, OutputLayout, audit_name, done_name, linked_part, shard_of_stem
from raypipe.logs import get_logger

log = get_logger(__name__)

KINDS = (
    "modified",
    "missing",
    "extra",
    "reordered",
    "bad_signature",
    "broken_chain",
    "rewritten",
    "rollback",
    "incomplete",
)
# Past this many findings of one kind in one file, the rest are summed up in one line: a reordered
# shard of a million samples should not print a million lines.
MAX_PER_FILE = 20
MAX_COUNT = 10**12  # no shard or manifest count is larger; bounds the work a forged number can ask for
MAX_AUDIT_BYTES = 4 * 2**30  # an audit file of a shard is far smaller (about 1 KB a sample)
SAFE_SHARD_NAME = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]*\.(tar|parquet|files)$")
# What raypipe itself keeps under OUTPUT/.raypipe besides the shards' sidecars, manifests and fragments.
STATE_FILES = ("manifest.json", "config.yaml", "job.json", "lease.json")
_RUN_RECORD = re.compile(rf"^{re.escape(STATE_DIR)}/runs/\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}\.json$")
_FRAGMENT = re.compile(rf"^{re.escape(STATE_DIR)}/fragments/(?P<stem>[^/]+)/[^/]+\.parquet$")


@dataclass(frozen=True)
class Problem:
    """One finding: its kind (see :data:`KINDS`), where (path under OUTPUT, maybe a record) and why."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_output`."""

    output: str
    problems: list[Problem] = field(default_factory=list)
    sequence: int | None = None  # of the current manifest
    anchor: int | None = None  # sequence of the checkpoint checked against, if any
    shards: int = 0
    samples: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    merkle_root: str | None = None
    key_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def render(self) -> str:
        """``OK ...`` on one line, or one line per problem."""
        if self.ok:
            counts = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items())) or "none"
            return (
                f"OK {self.output}: manifest {self.sequence}, {self.shards} shards, {self.samples} samples "
                f"({counts}), Merkle root {self.merkle_root}, signed by key {self.key_id}"
            )
        lines = [f"FAILED {self.output}: {len(self.problems)} problem(s)"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


def safe_shard_name(shard: str) -> bool:
    """Whether a name in a manifest is one raypipe gives a shard, so that it names a file (or, for a
    group of files, a folder) inside OUTPUT."""
    if not SAFE_SHARD_NAME.match(shard):
        return False
    if not is_files_group(shard):
        return ".." not in shard
    try:
        group_folder(shard)  # quoted: its parts are checked once unquoted
    except FileTreeError:
        return False
    return True


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _malformed(manifest: dict[str, Any]) -> str | None:
    """What makes a manifest unusable for the checks below (wrong types, absurd numbers), or None."""
    if not _count(manifest.get("sequence")) or manifest["sequence"] < 1:
        return "sequence is not a positive integer"
    if not isinstance(manifest.get("records"), dict) or not isinstance(manifest.get("counts"), dict):
        return "records or counts is not an object"
    if not all(_count(v) for v in manifest["counts"].values()):
        return "counts are not all whole numbers"
    overwrite = manifest.get("overwrite")
    if overwrite is not None and (
        not isinstance(overwrite, dict)
        or not isinstance(overwrite.get("removed"), list)
        or not all(isinstance(name, str) for name in overwrite["removed"])
    ):
        return "overwrite is not a list of removed shard names"
    shards = manifest.get("shards")
    if not isinstance(shards, dict):
        return "shards is not an object"
    for name, entry in shards.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("counts"), dict):
            return f"the entry of {name[:80]} is not an object with counts"
        if not _count(entry.get("samples")) or not _count(entry.get("released", 0)):
            return f"the entry of {name[:80]} has no usable sample count"
        if not all(_count(v) for v in entry["counts"].values()):
            return f"the entry of {name[:80]} has counts that are not whole numbers"
    return None


def _by_seq(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in input order; rows without a usable ``seq`` (a damaged audit) go last instead of raising."""
    return sorted(rows, key=lambda row: (0, row["seq"]) if isinstance(row.get("seq"), int) else (1, 0))


def _digest(manifest: dict[str, Any]) -> str | None:
    """The chain hash of a manifest, or None when it holds values canonical JSON refuses (NaN)."""
    try:
        return manifest_digest(manifest)
    except ValueError:
        return None


class _Verifier:
    def __init__(self, layout: OutputLayout, key: Key, report: VerifyReport) -> None:
        self.layout = layout
        self.fs = layout.fs
        self.key = key
        self.report = report
        self._per_file: Counter[tuple[str, str]] = Counter()
        self.read_files: set[str] = set()  # files of groups that check_files read and checked
        self.digests: dict[int, str | None] = {}  # chain hash per manifest sequence (check_chain)

    # ----------------------------------------------------------------------------------- findings

    def add(self, kind: str, where: str, detail: str) -> None:
        file = where.split(" ", 1)[0]
        self._per_file[(kind, file)] += 1
        if self._per_file[(kind, file)] <= MAX_PER_FILE:
            self.report.problems.append(Problem(kind, where, detail))

    def summarize_overflow(self) -> None:
        for (kind, file), count in sorted(self._per_file.items()):
            if count > MAX_PER_FILE:
                self.report.problems.append(
                    Problem(kind, file, f"... and {count - MAX_PER_FILE} more of the same kind")
                )

    # ----------------------------------------------------------------------------------- manifest

    def load_manifest(self) -> dict[str, Any] | None:
        where = f"{STATE_DIR}/{MANIFEST_FILE}"
        path = manifest_path(self.layout)
        if not exists(self.fs, path):
            self.add("missing", where, "no signed run manifest (the run has not finished, or it was removed)")
            return None
        manifest = self.read_json(path, where)
        if manifest is None:
            return None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            self.add("modified", where, f"not a {FORMAT} manifest")
            return None
        malformed = _malformed(manifest)
        if malformed:
            self.check_signature(manifest, where)
            self.add("modified", where, f"malformed manifest: {malformed}")
            return None
        return manifest

    def regular(self, path: str, where: str) -> bool:
        """True for a regular file; anything else (link, device, folder) is reported, never read."""
        if not exists(self.fs, path):
            return False
        if is_local(self.fs):
            mode = os.lstat(self.fs._strip_protocol(path)).st_mode
            ok = stat.S_ISREG(mode)
        else:
            ok = self.fs.info(path).get("type") == "file"
        if not ok:
            self.add("modified", where, "not a regular file (a link, device or folder); not read")
        return ok

    def read_json(self, path: str, where: str) -> Any:
        """Bounded JSON of a file under OUTPUT, or None after reporting why it is unusable."""
        if not self.regular(path, where):
            return None
        if self.fs.size(path) > MAX_MANIFEST_BYTES:
            self.add("modified", where, f"over {MAX_MANIFEST_BYTES} bytes; not read")
            return None
        try:
            return parse_json(read_bytes(self.fs, path), where)
        except (ValueError, UnicodeDecodeError) as exc:
            self.add("modified", where, f"not valid JSON ({exc})")
            return None

    def check_signature(self, manifest: dict[str, Any], where: str) -> None:
        signature = manifest.get("signature")
        try:
            payload = signed_payload(manifest)
        except ValueError as exc:
            self.add("modified", where, f"cannot be canonicalized ({exc})")
            return
        if not verify(payload, signature, self.key):
            self.add("bad_signature", where, describe_mismatch(signature, self.key))

    def check_consistency(self, manifest: dict[str, Any], where: str) -> None:
        """Totals agree with the shard entries (a signed manifest that does not is a bug or a forgery)."""
        shards = manifest.get("shards") or {}
        totals: Counter[str] = Counter()
        for entry in shards.values():
            totals.update(entry.get("counts") or {})
        samples = sum(int(e.get("samples", 0)) for e in shards.values())
        if dict(totals) != {k: v for k, v in (manifest.get("counts") or {}).items() if v}:
            self.add("modified", where, "counts per status do not add up over the shards")
        if samples != manifest.get("samples") or samples != (manifest.get("records") or {}).get("count"):
            self.add("modified", where, "sample and record counts do not add up over the shards")
        try:
            root = entries_root(shards)
        except ValueError:
            root = None
        if root != (manifest.get("records") or {}).get("merkle_root"):
            self.add("modified", where, "the Merkle root over the shard entries differs")

    def check_chain(self, manifest: dict[str, Any]) -> None:
        sequence = int(manifest["sequence"])
        history: dict[int, tuple[str, dict[str, Any]]] = {}
        for name, data in iter_history(self.layout):
            where = f"{STATE_DIR}/{HISTORY_DIR}/{name}"
            if data is None:
                self.add("modified", where, "not a regular file of bounded size (a link, device or folder); not read")
                continue
            try:
                earlier = parse_json(data, where)
                malformed = _malformed(earlier) if isinstance(earlier, dict) else "not an object"
                if malformed:
                    raise ValueError(malformed)
                number = int(earlier["sequence"])
            except (ValueError, KeyError, TypeError) as exc:
                self.add("modified", where, f"not a readable manifest ({exc})")
                continue
            if name != f"{number:06d}.json":
                self.add("broken_chain", where, f"holds manifest {number}, not the one its name says")
                continue
            if number >= sequence:
                if number == sequence and _digest(earlier) == _digest(manifest):
                    continue  # left by an interrupted write: a copy of the current manifest
                self.add("extra", where, f"manifest {number} is not older than the current one ({sequence})")
                continue
            history[number] = (where, earlier)
        chain: list[tuple[str, dict[str, Any]]] = []
        for number in range(1, sequence):
            if number not in history:
                where = f"{STATE_DIR}/{HISTORY_DIR}/{number:06d}.json"
                self.add("missing", where, f"earlier manifest {number} of the chain is gone")
                chain.append((where, {}))
            else:
                chain.append(history[number])
        chain.append((f"{STATE_DIR}/{MANIFEST_FILE}", manifest))
        if chain[0][1] and chain[0][1].get("previous") is not None:
            self.add("broken_chain", chain[0][0], "the first manifest names a previous one")
        for (_, earlier), (where, later) in itertools.pairwise(chain):
            if not earlier or not later:
                continue  # a missing link is already reported
            if _digest(earlier) is None or later.get("previous") != _digest(earlier):
                self.add(
                    "broken_chain",
                    where,
                    f"'previous' does not match the hash of manifest {earlier.get('sequence')}",
                )
        for where, earlier in chain[:-1]:
            if earlier:
                self.check_signature(earlier, where)
        for (_, earlier), (where, later) in itertools.pairwise(chain):
            if earlier and later:
                self.check_history(earlier, later, where)
        self.digests = {int(m["sequence"]): _digest(m) for _, m in chain if m}

    def check_history(self, earlier: dict[str, Any], later: dict[str, Any], where: str) -> None:
        """No shard's entry changes or disappears from one manifest to the next unless it says why."""
        if earlier.get("chain_id") != later.get("chain_id"):
            self.add("broken_chain", where, f"chain_id differs from manifest {earlier.get('sequence')}'s")
        overwrite = later.get("overwrite")
        removed = set(overwrite.get("removed") or []) if isinstance(overwrite, dict) else set()
        before, after = earlier.get("shards"), later.get("shards")
        if not isinstance(before, dict) or not isinstance(after, dict):
            return
        for name, entry in sorted(before.items()):
            if after.get(name) == entry:
                continue
            if name in removed:
                continue
            change = "dropped" if name not in after else "changed"
            self.add(
                "rewritten",
                f"{where} {name}",
                f"the signed entry of manifest {earlier.get('sequence')} was {change} without a recorded reason",
            )

    # ------------------------------------------------------------------------------------- shards

    def check_shard(self, shard: str, entry: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Checks one shard; returns its audit rows in seq order when they match the manifest."""
        if not safe_shard_name(shard):
            self.add(
                "modified",
                f"{STATE_DIR}/{MANIFEST_FILE}",
                f"shard name {shard[:80]!r} is not a plain .tar, .parquet or .files name",
            )
            return None
        self.check_marker(shard, entry, done_name(shard))
        rows = self.check_audit(shard, entry, audit_name(shard))
        self.check_tar(shard, entry, rows)
        if rows is None:
            return None
        return _by_seq(rows)

    def check_marker(self, shard: str, entry: dict[str, Any], done_name: str) -> None:
        path = self.layout.done(shard)
        if not exists(self.fs, path):
            self.add("missing", done_name, "completion marker is gone")
            return
        marker = self.read_json(path, done_name)
        if not isinstance(marker, dict):
            return
        fields = ENTRY_FIELDS
        differ = [name for name in fields if marker.get(name) != entry.get(name)]
        if differ or marker.get("shard") != shard:
            self.add("modified", done_name, f"disagrees with the manifest on {', '.join(differ) or 'shard'}")

    def check_audit(self, shard: str, entry: dict[str, Any], audit_name: str) -> list[dict[str, Any]] | None:
        path = self.layout.audit(shard)
        if not exists(self.fs, path):
            self.add("missing", audit_name, "audit file is gone")
            return None
        if not self.regular(path, audit_name):
            return None
        if self.fs.size(path) > MAX_AUDIT_BYTES:
            self.add("modified", audit_name, f"over {MAX_AUDIT_BYTES} bytes; not read")
            return None
        data = read_bytes(self.fs, path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("audit_sha256"):
            self.add("modified", audit_name, f"sha256 {digest[:16]}... differs from the manifest's")
        try:
            rows = audit_rows(data)
        except (pa.ArrowException, OSError, ValueError) as exc:  # any of them: the file was damaged
            self.add("modified", audit_name, f"unreadable audit file ({type(exc).__name__})")
            return None
        self.check_records(entry, audit_name, rows)
        return rows

    def check_records(self, entry: dict[str, Any], audit_name: str, rows: list[dict[str, Any]]) -> None:
        samples = int(entry.get("samples", 0))
        seqs: list[Any] = [row.get("seq") for row in rows]
        seen = Counter(seqs)
        missing = samples > len(rows) + MAX_PER_FILE
        if missing:  # a claimed count is never a loop bound: past a few, the records gone are counted
            self.add("missing", audit_name, f"{samples - len(rows)} of the entry's {samples} records are gone")
        else:
            for position in range(samples):
                if position not in seen:
                    missing = True
                    self.add("missing", f"{audit_name} seq={position}", f"record {position} of {samples} is gone")
        extra = False
        for row in rows:
            seq = row.get("seq")
            if not isinstance(seq, int) or not 0 <= seq < samples or seen[seq] > 1:
                extra = True
                self.add(
                    "extra",
                    f"{audit_name} seq={seq}",
                    f"record for key {row.get('key')!r} is not one of the manifest's {samples} records",
                )
                if isinstance(seq, int):
                    seen[seq] = 1  # report a duplicate once, not once per copy
        if missing or extra:
            return
        if seqs != sorted(seqs):
            first = next(i for i, seq in enumerate(seqs) if seq != i)
            self.add(
                "reordered",
                audit_name,
                f"records out of input order (position {first} holds seq {seqs[first]})",
            )
        in_order = sorted(rows, key=lambda row: row["seq"])
        if records_root(in_order) != entry.get("records_root"):
            self.add("modified", audit_name, "record values differ from the manifest's Merkle root")
        counts = status_counts(in_order)
        if counts != entry.get("counts"):
            self.add(
                "modified",
                audit_name,
                f"counts per status {counts} differ from the manifest's {entry.get('counts')}",
            )

    def check_tar(self, shard: str, entry: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
        if is_files_group(shard):
            self.check_files(shard, entry, rows)
            return
        path = self.layout.tar(shard)
        if not exists(self.fs, path):
            self.add("missing", shard, "shard tar is gone" if not is_table_shard(shard) else "shard table is gone")
            return
        if not self.regular(path, shard):
            return
        if is_table_shard(shard):
            self.check_table(shard, path, entry, rows)
            return
        with self.fs.open(path, "rb") as handle:
            reader = HashingReader(handle)
            found: list[tuple[str, str]] = []
            try:
                for item in iter_samples(reader, source=shard):  # type: ignore[arg-type]  # stream mode: read() only
                    if isinstance(item, TarProblem):
                        self.add(
                            "extra",
                            f"{shard} {item.member_name}",
                            f"member is not a plain file ({item.reason})",
                        )
                    elif isinstance(item, Sample):
                        found.append((item.key, sample_digest(item.members)))
                readable = True
            except TarReadError as exc:
                self.add("modified", shard, f"unreadable tar ({exc})")
                readable = False
            digest = reader.drain()
        if digest != entry.get("tar_sha256"):
            self.add("modified", shard, f"sha256 {digest[:16]}... differs from the manifest's")
        if rows is not None and readable:
            self.check_released(shard, rows, found)

    def check_table(self, shard: str, path: str, entry: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
        """A Parquet shard: its sha256, then its rows against the released records. Its rows carry no
        key: row ``j`` is compared with the ``j``-th released record, by that record's key."""
        with spooled(self.fs, path, f"open {shard}") as (local, digest):  # what is hashed is what is parsed
            if digest != entry.get("tar_sha256"):
                self.add("modified", shard, f"sha256 {digest[:16]}... differs from the manifest's")
            if rows is None:
                return
            keys = [str(row.get("key")) for row in _by_seq(rows) if row.get("status") in RELEASED_STATUSES]
            try:
                found = [(key, sample_digest(members)) for key, members in keyed_members(local, keys)]
            except ParquetShardError as exc:
                self.add("modified", shard, f"unreadable table ({exc})")
                return
        self.check_released(shard, rows, found)

    def check_files(self, shard: str, entry: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
        """A group of files: the files in its folder (streamed, a sample at a time) against the digest of
        the manifest and the released records. Its samples come in key order, as the input's did. The
        files read are the ones :meth:`check_unlisted` takes as known; a folder reached through a link is
        not read."""
        folder = self.layout.folder(shard)
        link = linked_part(self.layout, folder)
        if link is not None:
            self.add("modified", shard, f"its folder is reached through a link ({link}); not read")
            return
        paths: dict[str, str] = {}
        for name, path in folder_files(self.fs, folder):
            self.read_files.add(path)
            if plain_name(name):
                paths[name] = path
            else:
                self.add(
                    "extra",
                    f"{shard} {name!a}",
                    "a file name raypipe never writes (not UTF-8, controls or a backslash)",
                )
        audited = {str(row.get("key")) for row in rows} if rows is not None else None
        hashes: list[tuple[str, str]] = []
        found: list[tuple[str, str]] = []
        for key, names in samples_of(paths):
            if audited is not None and key not in audited:  # no record: reported by check_released, never read
                found.append((key, ""))
                continue
            sample = hashlib.sha256()
            for name in names:
                if self.regular(paths[name], f"{shard} {name}"):
                    hashes.append((name, self._hash_member(paths[name], name, sample)))
            found.append((key, sample.hexdigest()))
        digest = listing_digest(hashes)
        if digest != entry.get("tar_sha256"):
            self.add("modified", shard, f"the files' digest {digest[:16]}... differs from the manifest's")
        if rows is not None:
            self.check_released(shard, rows, found)

    def _hash_member(self, path: str, name: str, sample: Any) -> str:
        """Stream one file into its sample's digest (as :func:`sample_digest` encodes a member); its own sha256."""
        sample.update(member_header(name, int(self.fs.info(path).get("size") or 0)))
        own = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while chunk := handle.read(8 * 2**20):
                sample.update(chunk)
                own.update(chunk)
        return own.hexdigest()

    def check_released(self, shard: str, rows: list[dict[str, Any]], found: list[tuple[str, str]]) -> None:
        """The tar (or table, or folder) holds exactly the released samples of the audit, in order, with the
        recorded bytes."""
        kind = "table" if is_table_shard(shard) else "folder" if is_files_group(shard) else "tar"
        in_order = _by_seq(rows)
        status = {row.get("key"): row.get("status") for row in in_order}
        expected: list[tuple[Any, Any]] = [
            (row.get("key"), row.get("output_sha256")) for row in in_order if row.get("status") in RELEASED_STATUSES
        ]
        expected_keys = [key for key, _ in expected]
        wanted = set(expected_keys)
        found_keys = [key for key, _ in found]
        present = Counter(found_keys)
        for key in found_keys:
            if key not in wanted:
                if key in status:
                    detail = f"sample is in the {kind}, but its audit status is {status[key]!r}: never releasable"
                else:
                    detail = f"sample is in the {kind} but has no audit record"
                self.add("extra", f"{shard} key={key}", detail)
            elif present[key] > 1:
                self.add("extra", f"{shard} key={key}", f"sample appears {present[key]} times")
                present[key] = 1
        for key in expected_keys:
            if key not in present:
                self.add("missing", f"{shard} key={key}", f"released sample is not in the {kind}")
        common_expected = [key for key in expected_keys if key in present]
        common_found = list(dict.fromkeys(key for key in found_keys if key in wanted))
        if common_expected != common_found:
            self.add("reordered", shard, "samples are not in the input order of the audit")
        recorded = dict(expected)
        for key, digest in dict(found).items():
            if key in recorded and recorded[key] != digest:
                self.add("modified", f"{shard} key={key}", "members differ from the audit's output_sha256")

    # ------------------------------------------------------------------------------------- output

    def check_unlisted(self, shards: set[str], sequence: int) -> None:
        """Every object under OUTPUT that is not a known name: ``extra`` (or ``incomplete`` for the
        fragments of unfinished work)."""
        root = self.layout.path().rstrip("/")
        known = {f"{STATE_DIR}/{name}" for name in STATE_FILES}
        known |= {f"{STATE_DIR}/{HISTORY_DIR}/{n:06d}.json" for n in range(1, sequence + 1)}
        for shard in shards:
            known |= {audit_name(shard), done_name(shard)} | (set() if is_files_group(shard) else {shard})
        unfinished: set[str] = set()
        for path in sorted(self.fs.find(root, withdirs=False)):
            name = path[len(root) + 1 :] if path.startswith(root + "/") else path
            if name in known or _RUN_RECORD.match(name) or self.fs._strip_protocol(path) in self.read_files:
                continue
            fragment = _FRAGMENT.match(name)
            if fragment and shard_of_stem(fragment["stem"]) not in shards:
                unfinished.add(fragment["stem"])
                continue
            if fragment:
                detail = "a fragment of a shard that is already finalized and signed (the next run removes it)"
            elif name.rsplit("/", 1)[-1].startswith("."):
                detail = "a hidden or temporary file; not part of the signed output"
            else:
                detail = "not listed in the manifest"
            self.add("extra", name, detail)
        for stem in sorted(unfinished):
            self.add(
                "incomplete",
                f"{STATE_DIR}/fragments/{stem}",
                "unfinished work of a run that is still going or was interrupted",
            )

    def check_anchor(self, manifest: dict[str, Any], anchor: str) -> None:
        """OUTPUT descends from the anchor's checkpoint, and every input it pins is unchanged."""
        from raypipe.audit.anchor import find_checkpoints, output_location, verified_checkpoint

        options = self.layout.options
        if anchor.endswith(".json"):
            where = redact(anchor)
            single, kind, reason = verified_checkpoint(anchor, options, self.key)
            if single is None:
                self.add(kind, where, reason)
                return
            checkpoint = single
        else:
            found = find_checkpoints(anchor, str(manifest.get("chain_id")), options, self.key)
            for uri, kind, reason in found.invalid:
                self.add(kind, redact(uri), reason)
            if found.newest is None:
                self.add("rollback", redact(anchor), "the anchor holds no valid checkpoint of this output's chain")
                return
            where, checkpoint = redact(found.newest[0]), found.newest[1]
        if checkpoint.get("output") != output_location(self.layout.root):
            self.add(
                "rollback",
                where,
                f"the checkpoint belongs to the output at {checkpoint.get('output')}, not this one",
            )
            return
        self.report.anchor = checkpoint["sequence"]
        if checkpoint["chain_id"] != manifest.get("chain_id"):
            self.add("rollback", where, "the checkpoint belongs to another output (chain_id differs)")
            return
        number, current = checkpoint["sequence"], int(manifest["sequence"])
        if number > current:
            self.add(
                "rollback",
                f"{STATE_DIR}/{MANIFEST_FILE}",
                f"OUTPUT is at manifest {current}, but the anchor holds checkpoint {number}: OUTPUT was rolled "
                "back or truncated",
            )
        elif self.digests.get(number) != checkpoint["manifest_digest"]:
            self.add(
                "rollback",
                f"{STATE_DIR}/{MANIFEST_FILE}",
                f"manifest {number} of OUTPUT is not the one the anchor's checkpoint {number} pins: its history "
                "was replaced",
            )
        for shard, pinned in sorted(checkpoint["inputs"].items()):
            if isinstance(pinned, dict):
                self.check_input(shard, pinned)

    def check_input(self, shard: str, pinned: dict[str, Any]) -> None:
        from raypipe.io.identity import object_identity, same_object
        from raypipe.io.storage import filesystem

        uri = str(pinned.get("uri"))
        if is_files_group(uri):
            if group_content(uri, self.layout.options) != pinned.get("sha256"):
                self.add("modified", uri, f"the input files of {shard} differ from the ones the anchor pins")
            return
        fs, path = filesystem(uri, self.layout.options)
        if not exists(fs, path):
            self.add("missing", uri, f"the input of {shard} pinned by the anchor is gone")
            return
        current = object_identity(uri, self.layout.options)
        if "etag" in pinned:
            changed = not same_object(pinned, current)
        else:  # local files: the modification time changes with a copy, the content must not
            with fs.open(path, "rb") as handle:
                changed = current["size"] != pinned.get("size") or HashingReader(handle).drain() != pinned.get("sha256")
        if changed:
            self.add("modified", uri, f"the input of {shard} differs from the one the anchor pins")

    def run(self, anchor: str | None) -> None:
        manifest = self.load_manifest()
        if manifest is None:
            return
        where = f"{STATE_DIR}/{MANIFEST_FILE}"
        report = self.report
        report.sequence = manifest.get("sequence")
        self.check_signature(manifest, where)
        self.check_consistency(manifest, where)
        self.check_chain(manifest)
        shards: dict[str, dict[str, Any]] = manifest.get("shards") or {}
        for shard in sorted(shards):
            self.check_shard(shard, shards[shard])
        self.check_unlisted(set(shards), int(manifest["sequence"]))
        if anchor is not None:
            self.check_anchor(manifest, anchor)
        self.summarize_overflow()
        records = manifest.get("records") or {}
        report.shards = len(shards)
        report.samples = int(manifest.get("samples") or 0)
        report.counts = dict(manifest.get("counts") or {})
        report.merkle_root = records.get("merkle_root")
        report.key_id = (manifest.get("signature") or {}).get("key_id")


def verify_output(
    root: str, key: Key, options: StorageOptions | None = None, anchor: str | None = None
) -> VerifyReport:
    """Verify the run under OUTPUT ``root`` against its signed manifest with ``key``.

    With ``anchor`` (a checkpoint file, or the ``audit.anchor`` folder), also check that OUTPUT
    descends from that checkpoint and that the inputs it pins are unchanged. Never raises for what it
    finds: every finding is a :class:`Problem` in the report. Storage errors (unreachable bucket,
    permissions) do raise.
    """
    layout = OutputLayout(root, options or StorageOptions())
    report = VerifyReport(output=redact(root))
    _Verifier(layout, key, report).run(anchor)
    for problem in report.problems:
        log.debug("verify: %s", problem)
    log.info("verified %s: %s", report.output, "OK" if report.ok else f"{len(report.problems)} problem(s)")
    return report
