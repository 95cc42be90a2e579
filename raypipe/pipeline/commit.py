"""Commit and finalize: fragments of processed samples -> one output shard, its audit, its marker.

A *fragment* holds the processed samples of one shard from one write task: their audit records and,
for released samples, their output members. Fragments are published atomically, so any fragment
that exists is complete. A shard is *finalized* once fragments cover every one of its samples:
the output tar (released samples, input order), the audit parquet (every sample), then the
completion marker, written last. Only the marker makes a shard count as done.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.audit.manifest import (
    MARKER_MAC,
    audit_rows,
    face_counts,
    faces_retried,
    marker_mac,
    records_root,
    status_counts,
)
from raypipe.audit.schema import RECORD_TYPE, AuditRecord, records_table, sample_digest
from raypipe.audit.signing import mac, mac_file
from raypipe.io.filetrees import file_of_sample, folder_files, is_files_group, listing_digest, sample_key
from raypipe.io.publish import delete, publish_bytes, publish_stream, read_bytes
from raypipe.io.spans import InputChangedError, MemberRef, SpanReader
from raypipe.io.storage import filesystem, redact
from raypipe.io.tables import is_table_shard, spooled, write_rows
from raypipe.io.tars import Sample, write_tar
from raypipe.layout import OutputLayout, group_folder_of
from raypipe.logs import get_logger
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.task import SampleTask
from raypipe.records import Status

log = get_logger(__name__)

_REF = pa.struct([("offset", pa.int64()), ("size", pa.int64()), ("sha256", pa.string())])
FRAGMENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("end", pa.bool_()),  # end-of-shard marker: seq is the shard's sample count
        ("released", pa.bool_()),
        ("audit", RECORD_TYPE),  # the sample's audit record, in the audit's own columns
        # A member is either its bytes (out_data, out_refs null) or, released unchanged from an
        # uncompressed input, where it lies in the input shard (out_refs, out_data empty): finalize
        # reads those from the input, so unchanged bytes are never stored twice.
        ("out_names", pa.list_(pa.string())),
        ("out_data", pa.list_(pa.large_binary())),
        ("out_refs", pa.list_(_REF)),
        # Originals of samples held back, only when the user asked for a quarantine location.
        ("held_names", pa.list_(pa.string())),
        ("held_data", pa.list_(pa.large_binary())),
        ("held_refs", pa.list_(_REF)),
        # JSON identity of the input shard the sample was read from (size and ETag or mtime; the end
        # row adds the sha256 of the whole shard as read): a resume never mixes two versions of an input.
        ("input", pa.string()),
    ]
)
_INDEX_COLUMNS = ["seq", "end", "released", "audit", "input"]  # what finalize reads of every row first
_MEMBER_COLUMNS = [f"{prefix}_{part}" for prefix in ("out", "held") for part in ("names", "data", "refs")]
ROW_GROUP_BYTES = 8 * 2**20  # a fragment's row groups hold about this much member data (at least a row)
FRAGMENT_TAG_CHARS = 32  # 128 bits of HMAC in each fragment's file name
QUARANTINE_NOTE = "raypipe-quarantine.json"  # member added to each held-back sample: why it was held


@dataclass(frozen=True)
class RunInfo:
    """Per-run values stamped on every audit record."""

    config_hash: str
    code_version: str
    method: dict[str, Any]
    quarantine: OutputLayout | None = None  # where held-back originals go; None: nowhere
    # Authenticates fragments and markers (derived from the signing key, never the key itself): files
    # planted under OUTPUT by someone without the key are never taken for committed work. None: no key.
    fragment_key: bytes | None = field(default=None, repr=False)


def audit_record(task: SampleTask, run: RunInfo) -> AuditRecord:
    """The audit record of one sample. Holds hashes, boxes and scores: nothing biometric or secret."""
    status = task.status or Status.FAILED
    released = status.releasable and task.out_members is not None
    prov = task.provenance
    name = run.method.get("name", "reverse_personalization")
    knobs = run.method if name == "reverse_personalization" else {}  # a classic method has no such settings
    return AuditRecord(
        key=task.key,
        seq=task.seq,
        source_shard=task.shard,
        output_shard=task.shard_name if released else None,
        members=[name for name, _ in task.members],
        input_sha256=task.input_sha256 or None,
        status=status.value,
        faces_count=len(task.faces),
        faces=[face.to_dict() for face in task.faces],
        missed_faces=task.missed_faces,
        error=task.error,
        error_step=task.error_step,
        method=name,
        guidance_scale=knobs.get("guidance_scale"),
        skip=knobs.get("skip"),
        num_steps=knobs.get("num_steps"),
        seed=knobs.get("seed"),
        attribute_prompt=_attribute_prompt(task, knobs),
        models=json.dumps(prov.get("models", {}), sort_keys=True),
        weight_hashes=json.dumps(_weight_hashes(prov), sort_keys=True),
        config_hash=run.config_hash,
        code_version=run.code_version,
        detector=prov.get("detector"),
        recognizer=prov.get("recognizer"),
        node=prov.get("node"),
        device=prov.get("device"),
        timings=json.dumps(task.timings, sort_keys=True),
    )


def _attribute_prompt(task: SampleTask, knobs: dict[str, Any]) -> str | None:
    """The prompt this sample's faces were anonymized with: its own (method.attribute_from) where it
    was read, else the job's; null for none, and for a sample whose prompt was never read."""
    if task.attribute_prompt is not None:
        return task.attribute_prompt or None
    return None if knobs.get("attribute_from") else knobs.get("attribute_prompt")


def _weight_hashes(prov: dict[str, Any]) -> dict[str, Any]:
    """The diffusion models' weight hashes and those of the detector and the gate's recognizer."""
    hashes = dict(prov.get("weight_hashes") or {})
    for name in ("detector", "recognizer"):
        if prov.get(f"{name}_weights"):
            hashes[name] = prov[f"{name}_weights"]
    return hashes


def fragment_bytes(tasks: Iterable[SampleTask], run: RunInfo) -> bytes:
    rows: dict[str, list[Any]] = {name: [] for name in FRAGMENT_SCHEMA.names}
    for task in sorted(tasks, key=lambda t: (t.seq, t.end_of_shard)):
        released = bool(task.status and task.status.releasable and task.out_members is not None)
        held = run.quarantine is not None and not released and not task.end_of_shard
        rows["seq"].append(task.seq)
        rows["end"].append(task.end_of_shard)
        rows["released"].append(released)
        rows["audit"].append(None if task.end_of_shard else audit_record(task, run).to_row())
        _add_members(rows, "out", task.out_members if released and task.out_members else [])
        originals = [task.unchanged(index) for index in range(len(task.members))] if held else []
        _add_members(rows, "held", originals)
        rows["input"].append(task.input_id)
    table = pa.table(rows, schema=FRAGMENT_SCHEMA)
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, FRAGMENT_SCHEMA) as writer:
        sizes = [sum(map(len, out)) + sum(map(len, held)) for out, held in zip(rows["out_data"], rows["held_data"])]
        for start, stop in _row_groups(sizes):
            writer.write_table(table.slice(start, stop - start))
    return buffer.getvalue()


def _add_members(rows: dict[str, list[Any]], prefix: str, members: list[tuple[str, bytes | MemberRef]]) -> None:
    rows[f"{prefix}_names"].append([name for name, _ in members])
    rows[f"{prefix}_data"].append([b"" if isinstance(data, MemberRef) else data for _, data in members])
    rows[f"{prefix}_refs"].append([data.to_dict() if isinstance(data, MemberRef) else None for _, data in members])


def _row_groups(sizes: list[int]) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` row ranges holding about ``ROW_GROUP_BYTES`` of member data each (``sizes``:
    the bytes of each row), so finalize can read one group at a time."""
    start, held = 0, 0
    for row, size in enumerate(sizes):
        held += size
        if held >= ROW_GROUP_BYTES:
            yield start, row + 1
            start, held = row + 1, 0
    if start < len(sizes) or not sizes:
        yield start, len(sizes)


def commit_fragment(
    layout: OutputLayout, shard: str, tasks: list[SampleTask], run: RunInfo
) -> tuple[list[int], int | None]:
    """Publish one fragment; returns the sample positions it covers and the shard size if it saw the end."""
    samples = sorted(t.seq for t in tasks if not t.end_of_shard)
    ends = [t.seq for t in tasks if t.end_of_shard]
    name_digest = hashlib.sha256(json.dumps([samples, ends]).encode()).hexdigest()[:16]
    first = samples[0] if samples else ends[0]
    data = fragment_bytes(tasks, run)
    tag = f"-{fragment_tag(run.fragment_key, shard, data)}" if run.fragment_key else ""
    path = posixpath.join(layout.fragments(shard), f"{first:09d}-{name_digest}{tag}.parquet")
    publish_bytes(layout.fs, path, data)
    return samples, (ends[0] if ends else None)


def fragment_tag(secret: bytes, shard: str, data: bytes) -> str:
    """The HMAC a fragment's file name carries: binds its bytes to its shard under the run's key."""
    return mac(secret, *_fragment_mac_parts(shard), data)[:FRAGMENT_TAG_CHARS]


def _fragment_mac_parts(shard: str) -> tuple[bytes, bytes]:
    """What a fragment tag covers before the fragment's bytes."""
    return (b"raypipe fragment", shard.encode())


def authentic_fragments(layout: OutputLayout, shard: str, secret: bytes | None) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of the shard's fragments; with ``secret``, only those whose tag verifies (a
    fragment planted by someone without the key is skipped, left for ``verify`` to report)."""
    for path in list_fragments(layout, shard):
        data = read_bytes(layout.fs, path)
        if secret is not None and not hmac.compare_digest(_name_tag(path), fragment_tag(secret, shard, data)):
            log.warning("%s: fragment %s is not authenticated by the audit key; ignored", shard, path)
            continue
        yield path, data


def list_fragments(layout: OutputLayout, shard: str) -> list[str]:
    fs, folder = layout.fs, layout.fragments(shard)
    if not fs.exists(folder):
        return []
    return sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".parquet"))


@overload
def committed_positions(
    layout: OutputLayout, shard: str, *, secret: bytes | None = None
) -> tuple[Positions, int | None]: ...


@overload
def committed_positions(
    layout: OutputLayout, shard: str, with_inputs: Literal[True], *, secret: bytes | None = None
) -> tuple[Positions, int | None, set[str]]: ...


def committed_positions(
    layout: OutputLayout, shard: str, with_inputs: bool = False, *, secret: bytes | None = None
) -> Any:
    """Sample positions committed in (authentic) fragments of ``shard``, and its size if known; with
    ``with_inputs`` also the input identities (JSON) the fragments were read from."""
    seqs = Positions()
    inputs: set[str] = set()
    total: int | None = None
    for _, data in authentic_fragments(layout, shard, secret):
        table = pq.read_table(io.BytesIO(data), columns=["seq", "end", "input"])
        found = []
        for seq, end, source in zip(*(table.column(c).to_pylist() for c in ("seq", "end", "input"))):
            if end:
                total = seq
            else:
                found.append(seq)
                if source:
                    inputs.add(source)
        seqs.add(found)
    return (seqs, total, inputs) if with_inputs else (seqs, total)


def is_complete(seqs: Positions, total: int | None) -> bool:
    """Whether the positions committed cover every sample of a shard of ``total`` (None: size unknown)."""
    return total is not None and seqs.covers(total)


def finalize_shard(
    layout: OutputLayout,
    shard: str,
    quarantine: OutputLayout | None = None,
    secret: bytes | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Build the shard's tar and audit from its fragments, publish them, then the marker; drop fragments.

    The tar is streamed: fragments are copied to local temporary files (and authenticated there), an
    index of their small columns gives the input order, and each released sample's members are read
    one row group at a time, those released unchanged from the input shard ``source`` (checked against
    their sha256), while the tar goes out as a streamed upload whose hashes are computed on the way.
    So no process holds more than a row group and a sample, whatever the shard's size.

    With ``quarantine``, the originals of samples that were held back go to ``<quarantine>/<shard>``,
    each with a ``raypipe-quarantine.json`` member saying why (that location holds real faces: keep
    it access-restricted). With ``secret`` (the run's fragment key) only authentic fragments are used,
    and the marker carries an HMAC.
    """
    with tempfile.TemporaryDirectory(prefix="raypipe-finalize-") as spool:
        fragments = _Fragments(layout, shard, secret, spool)
        total, end_input = fragments.total, fragments.end_input
        if not is_complete(Positions(fragments.rows), total):
            raise RuntimeError(f"{shard}: fragments do not cover every sample yet ({len(fragments.rows)} of {total})")
        assert total is not None
        ordered = [fragments.rows[i] for i in range(total)]
        input_identity = _input_of(shard, end_input, ordered)
        records = [AuditRecord.from_row(row["audit"]) for row in ordered]
        fs = layout.fs
        if is_table_shard(shard):
            pinned = input_identity or {}
            output_sha256 = _finalize_table(layout, shard, quarantine, source, pinned, ordered, records, fragments)
        elif is_files_group(shard):
            output_sha256 = _finalize_files(layout, shard, quarantine, source, ordered, records, fragments)
        else:
            if quarantine is not None:
                with SpanReader(source, layout.options) as inputs:
                    _publish_quarantine(quarantine, shard, ordered, records, fragments, inputs)
            with SpanReader(source, layout.options) as inputs, publish_stream(fs, layout.tar(shard)) as tar:

                def samples() -> Iterator[Sample]:
                    for row, record in zip(ordered, records):
                        if row["released"]:
                            members = fragments.members(row["seq"], "out", inputs)
                            record.output_sha256 = sample_digest(members)
                            yield Sample(key=record.key, members=members)

                write_tar(samples(), tar)
            output_sha256 = tar.sha256
    released = sum(1 for row in ordered if row["released"])
    audit_buffer = io.BytesIO()
    pq.write_table(records_table(records), audit_buffer)
    audit = audit_buffer.getvalue()
    publish_bytes(fs, layout.audit(shard), audit)
    # The evidence is computed from the bytes as they were written, never read back from storage.
    written = audit_rows(audit)
    marker = {
        "shard": shard,
        "samples": total,
        "released": released,
        "counts": status_counts(written),
        # For the run summary (the records are the evidence).
        "face_counts": face_counts(written),
        "faces_retried": faces_retried(written),
        "tar_sha256": output_sha256,  # the output shard's, tar or Parquet
        "audit_sha256": hashlib.sha256(audit).hexdigest(),
        "records_root": records_root(written),
        "config_hash": records[0].config_hash if records else None,
        "input": input_identity,
        # What the GPU actors recorded, for the run manifest (so the driver never reads audits back).
        "weight_hashes": next((r.weight_hashes for r in records if r.weight_hashes not in (None, "{}")), None),
    }
    if secret is not None:
        marker[MARKER_MAC] = marker_mac(marker, secret)
    publish_bytes(fs, layout.done(shard), json.dumps(marker, indent=2, sort_keys=True).encode())
    for path in fragments.paths:
        delete(fs, path)
    log.info("%s finalized: %d samples, %d released", shard, total, released)
    return marker


class _Fragments:
    """A shard's authentic fragments, copied to local files: every row's small columns in memory
    (``rows`` by sample position, the first copy of a sample committed twice), members on demand."""

    def __init__(self, layout: OutputLayout, shard: str, secret: bytes | None, spool: str) -> None:
        self.paths: list[str] = []  # the fragments used, where they are under OUTPUT
        self.rows: dict[int, dict[str, Any]] = {}
        self.total: int | None = None
        self.end_input: str | None = None
        self._files: list[str] = []
        self._where: dict[int, tuple[int, int, int]] = {}  # seq -> (file, row group, row in the group)
        self._group: tuple[tuple[int, int], dict[str, list[Any]]] | None = None  # the one group held
        self._names: tuple[tuple[int, int, str], list[Any]] | None = None  # names of one group, by names()
        for path in list_fragments(layout, shard):
            local = os.path.join(spool, f"{len(self._files):06d}.parquet")
            with layout.fs.open(path, "rb") as remote, open(local, "wb") as copy:
                shutil.copyfileobj(remote, copy, 8 * 2**20)
            if secret is not None and not _authentic(local, _name_tag(path), secret, shard):
                log.warning("%s: fragment %s is not authenticated by the audit key; ignored", shard, path)
                continue
            self.paths.append(path)
            self._files.append(local)
            self._index(len(self._files) - 1)

    def _index(self, file: int) -> None:
        parquet = pq.ParquetFile(self._files[file])
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=_INDEX_COLUMNS)
            for position, row in enumerate(table.to_pylist()):
                if row["end"]:
                    self.total, self.end_input = row["seq"], row.get("input")
                elif row["seq"] not in self.rows:  # a retried write may commit a sample twice: same bytes
                    self.rows[row["seq"]] = row
                    self._where[row["seq"]] = (file, group, position)

    def names(self, seq: int, prefix: str) -> list[str]:
        """The names of the ``out`` or ``held`` members of sample ``seq`` (their bytes are not read)."""
        file, group, position = self._where[seq]
        if self._names is None or self._names[0] != (file, group, prefix):
            table = pq.ParquetFile(self._files[file]).read_row_group(group, columns=[f"{prefix}_names"])
            self._names = ((file, group, prefix), table.column(0).to_pylist())
        return [str(name) for name in self._names[1][position] or []]

    def members(self, seq: int, prefix: str, inputs: SpanReader) -> list[tuple[str, bytes]]:
        """The ``out`` (released) or ``held`` (original) members of sample ``seq``, all as bytes."""
        file, group, position = self._where[seq]
        if self._group is None or self._group[0] != (file, group):
            table = pq.ParquetFile(self._files[file]).read_row_group(group, columns=_MEMBER_COLUMNS)
            self._group = ((file, group), table.to_pydict())
        values = self._group[1]
        names, data, refs = (values[f"{prefix}_{part}"][position] for part in ("names", "data", "refs"))
        return [
            (name, inputs.read(MemberRef(**ref)) if ref is not None else payload)
            for name, payload, ref in zip(names, data, refs)
        ]


def _authentic(local: str, tag: str, secret: bytes, shard: str) -> bool:
    """Whether the fragment copied to ``local`` carries the tag its name gives (read in chunks)."""
    with open(local, "rb") as handle:
        expected = mac_file(secret, _fragment_mac_parts(shard), handle, os.path.getsize(local))
    return hmac.compare_digest(tag, expected[:FRAGMENT_TAG_CHARS])


def _name_tag(path: str) -> str:
    """The tag in a fragment's file name (``<first>-<digest>-<tag>.parquet``)."""
    return path.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 1)[-1]


def _input_of(shard: str, end_input: str | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pinned input of a shard; every fragment must have read the same version of it."""
    end = json.loads(end_input) if end_input else None
    pinned = {k: v for k, v in end.items() if k != "sha256"} if end else None
    seen: set[str] = {str(row.get("input") or "") for row in rows}
    identities = [json.loads(value) if value else None for value in seen]
    # A tar's rows carry the identity planned; a table's carry its sha256 too (the end marker's).
    if any(identity != pinned and identity != end for identity in identities):
        raise RuntimeError(
            f"{shard}: its fragments were read from different versions of the input shard; "
            "rerun the same command to restart that shard"
        )
    return end


def _finalize_table(
    layout: OutputLayout,
    shard: str,
    quarantine: OutputLayout | None,
    source: str,
    pinned: dict[str, Any],
    rows: list[dict[str, Any]],
    records: list[AuditRecord],
    fragments: _Fragments,
) -> str:
    """Publish a Parquet shard (and its quarantine table) from the input table and the fragments;
    returns the output's sha256. The input is spooled again and must be the bytes its rows were read
    from (``pinned``, with the sha256 the read stage recorded): every column but the member columns is
    copied from it."""
    fs, path = filesystem(source, layout.options)
    with spooled(fs, path, f"open {redact(source)}") as (local, digest):
        if digest != pinned.get("sha256"):
            raise InputChangedError(
                f"{redact(source)}: the input table is not the one its rows were read from (sha256 {digest[:16]}...);"
                " rerun the same command to restart that shard"
            )
        if quarantine is not None and not all(row["released"] for row in rows):
            try:
                with publish_stream(quarantine.fs, quarantine.tar(shard)) as out:
                    write_rows(
                        local,
                        lambda seq: not rows[seq]["released"],
                        out,
                        note=lambda seq: json.dumps(_quarantine_note(records[seq])),
                    )
            except (pa.ArrowException, ValueError, OSError) as exc:  # never a reason not to finalize
                log.error("%s: its held-back rows could not be copied to the quarantine (%s)", shard, exc)

        with SpanReader(source, layout.options) as inputs:  # members of tables are bytes: it is never opened

            def released(seq: int) -> list[tuple[str, bytes]]:
                members = fragments.members(seq, "out", inputs)
                records[seq].output_sha256 = sample_digest(members)
                return members

            with publish_stream(layout.fs, layout.tar(shard)) as table:
                write_rows(local, lambda seq: bool(rows[seq]["released"]), table, members=released)
    return table.sha256


def _finalize_files(
    layout: OutputLayout,
    shard: str,
    quarantine: OutputLayout | None,
    source: str,
    rows: list[dict[str, Any]],
    records: list[AuditRecord],
    fragments: _Fragments,
) -> str:
    """Publish the released files of a group of files to its folder under OUTPUT (and its held-back
    originals to ``<quarantine>/<group>.tar``); returns the digest of the files written. A file of one
    of the group's samples that an earlier attempt left there and this one does not release is
    removed; no other file in the folder is touched, and nothing is written through a link."""
    folder = group_folder_of(layout, shard)
    with SpanReader(source, layout.options) as inputs:  # members of files are bytes: it is never opened
        if quarantine is not None:
            try:
                _publish_quarantine(quarantine, shard, rows, records, fragments, inputs, f"{shard}.tar")
            except OSError as exc:  # never a reason not to finalize
                log.error("%s: its held-back files could not be copied to the quarantine (%s)", shard, exc)
        for row, record in zip(rows, records):  # a fragment names where finalize writes: checked before any write
            for name in fragments.names(row["seq"], "out") if row["released"] else []:
                if not file_of_sample(name, record.key):
                    raise RuntimeError(f"{shard}: the member {name[:80]!r} of {record.key!r} is not a file name of it")
        hashes: list[tuple[str, str]] = []
        for row, record in zip(rows, records):
            if not row["released"]:
                continue
            released = fragments.members(row["seq"], "out", inputs)
            record.output_sha256 = sample_digest(released)
            for name, data in released:
                publish_bytes(layout.fs, posixpath.join(folder, name), data)
                hashes.append((name, hashlib.sha256(data).hexdigest()))
    written, keys = {name for name, _ in hashes}, {record.key for record in records}
    for name, path in folder_files(layout.fs, folder):
        if sample_key(name) in keys and name not in written:
            delete(layout.fs, path)
    return listing_digest(hashes)


def _quarantine_note(record: AuditRecord) -> dict[str, Any]:
    """Why a sample was held back, beside its originals in the quarantine."""
    values = record.to_row()
    return {k: values[k] for k in ("key", "status", "error", "error_step", "faces", "missed_faces")}


def _publish_quarantine(
    quarantine: OutputLayout,
    shard: str,
    rows: list[dict[str, Any]],
    records: list[AuditRecord],
    fragments: _Fragments,
    inputs: SpanReader,
    tar_name: str | None = None,
) -> None:
    """Every held-back original, in ``<quarantine>/<tar_name>`` (by default the shard's name), under a
    key of its own: a shard may repeat a key (a, b, a), and two held samples with one key side by side
    would be merged by every reader (and refused by write_tar). A repeated key becomes
    ``<key>_seq<N>`` (N: the sample's position); its note keeps the real names."""

    def renamed(name: str, suffix: str) -> str:  # dir/a.seg.png -> dir/a<suffix>.seg.png
        folder, base = posixpath.split(name)
        stem, dot, ext = base.partition(".")
        return posixpath.join(folder, stem + suffix) + dot + ext

    held_rows = [(row, record) for row, record in zip(rows, records) if not row["released"]]
    if not held_rows:
        return
    taken = {record.key for record in records}  # a new key must not be one the shard uses itself
    used: set[str] = set()

    def held() -> Iterator[Sample]:
        for row, record in held_rows:
            members = fragments.members(row["seq"], "held", inputs)
            if not members:
                continue
            note = _quarantine_note(record)
            key, names = record.key, [name for name, _ in members]
            if key in used:
                suffix = f"_seq{row['seq']}"
                while key + suffix in taken | used:
                    suffix += "_"
                note |= {"seq": row["seq"], "members": names}
                key, names = key + suffix, [renamed(name, suffix) for name in names]
            used.add(key)
            out = [(name, data) for name, (_, data) in zip(names, members)]
            out.append((f"{key}.{QUARANTINE_NOTE}", json.dumps(note, sort_keys=True).encode()))
            yield Sample(key=key, members=out)

    with publish_stream(quarantine.fs, quarantine.tar(tar_name or shard)) as tar:
        write_tar(held(), tar)
