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
import posixpath
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
from raypipe.audit.schema import records_table, sample_digest
from raypipe.audit.signing import mac
from raypipe.io.publish import delete, publish_bytes, read_bytes
from raypipe.io.tars import Sample, tar_bytes
from raypipe.layout import OutputLayout
from raypipe.logs import get_logger
from raypipe.pipeline.task import SampleTask
from raypipe.records import Status

log = get_logger(__name__)

FRAGMENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("end", pa.bool_()),  # end-of-shard marker: seq is the shard's sample count
        ("released", pa.bool_()),
        ("audit", pa.string()),  # the sample's audit record as JSON
        ("out_names", pa.list_(pa.string())),
        ("out_data", pa.list_(pa.large_binary())),
        # Originals of samples held back, only when the user asked for a quarantine location.
        ("held_names", pa.list_(pa.string())),
        ("held_data", pa.list_(pa.large_binary())),
        # JSON identity of the input shard the sample was read from (size and ETag or mtime; the end
        # row adds the sha256 of the whole shard as read): a resume never mixes two versions of an input.
        ("input", pa.string()),
    ]
)
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


def audit_record(task: SampleTask, run: RunInfo) -> dict[str, Any]:
    """The audit record of one sample. Holds hashes, boxes and scores: nothing biometric or secret."""
    status = task.status or Status.FAILED
    released = status.releasable and task.out_members is not None
    prov = task.provenance
    return {
        "key": task.key,
        "seq": task.seq,
        "source_shard": task.shard,
        "output_shard": task.shard_name if released else None,
        "members": [name for name, _ in task.members],
        "input_sha256": task.input_sha256 or None,
        "output_sha256": sample_digest(task.out_members) if released and task.out_members is not None else None,
        "status": status.value,
        "faces_count": len(task.faces),
        "faces": [face.to_dict() for face in task.faces],
        "missed_faces": task.missed_faces,
        "error": task.error,
        "error_step": task.error_step,
        "guidance_scale": run.method.get("guidance_scale"),
        "skip": run.method.get("skip"),
        "num_steps": run.method.get("num_steps"),
        "seed": run.method.get("seed"),
        "attribute_prompt": run.method.get("attribute_prompt"),
        "models": json.dumps(prov.get("models", {}), sort_keys=True),
        "weight_hashes": json.dumps(_weight_hashes(prov), sort_keys=True),
        "config_hash": run.config_hash,
        "code_version": run.code_version,
        "detector": prov.get("detector"),
        "recognizer": prov.get("recognizer"),
        "node": prov.get("node"),
        "device": prov.get("device"),
        "timings": json.dumps(task.timings, sort_keys=True),
    }


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
        rows["seq"].append(task.seq)
        rows["end"].append(task.end_of_shard)
        rows["released"].append(released)
        rows["audit"].append(None if task.end_of_shard else json.dumps(audit_record(task, run), sort_keys=True))
        rows["out_names"].append([n for n, _ in task.out_members] if released and task.out_members else [])
        rows["out_data"].append([d for _, d in task.out_members] if released and task.out_members else [])
        held = run.quarantine is not None and not released and not task.end_of_shard
        rows["held_names"].append([n for n, _ in task.members] if held else [])
        rows["held_data"].append([d for _, d in task.members] if held else [])
        rows["input"].append(task.input_id)
    buffer = io.BytesIO()
    pq.write_table(pa.table(rows, schema=FRAGMENT_SCHEMA), buffer)
    return buffer.getvalue()


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
    return mac(secret, b"raypipe fragment", shard.encode(), data)[:FRAGMENT_TAG_CHARS]


def authentic_fragments(layout: OutputLayout, shard: str, secret: bytes | None) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of the shard's fragments; with ``secret``, only those whose tag verifies (a
    fragment planted by someone without the key is skipped, left for ``verify`` to report)."""
    for path in list_fragments(layout, shard):
        data = read_bytes(layout.fs, path)
        if secret is not None:
            tag = path.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 1)[-1]
            if not hmac.compare_digest(tag, fragment_tag(secret, shard, data)):
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
) -> tuple[set[int], int | None]: ...


@overload
def committed_positions(
    layout: OutputLayout, shard: str, with_inputs: Literal[True], *, secret: bytes | None = None
) -> tuple[set[int], int | None, set[str]]: ...


def committed_positions(
    layout: OutputLayout, shard: str, with_inputs: bool = False, *, secret: bytes | None = None
) -> Any:
    """Sample positions committed in (authentic) fragments of ``shard``, and its size if known; with
    ``with_inputs`` also the input identities (JSON) the fragments were read from."""
    seqs: set[int] = set()
    inputs: set[str] = set()
    total: int | None = None
    for _, data in authentic_fragments(layout, shard, secret):
        table = pq.read_table(io.BytesIO(data), columns=["seq", "end", "input"])
        for seq, end, source in zip(*(table.column(c).to_pylist() for c in ("seq", "end", "input"))):
            if end:
                total = seq
            else:
                seqs.add(seq)
                if source:
                    inputs.add(source)
    return (seqs, total, inputs) if with_inputs else (seqs, total)


def is_complete(seqs: set[int], total: int | None) -> bool:
    return total is not None and len(seqs) >= total and all(i in seqs for i in range(total))


def finalize_shard(
    layout: OutputLayout, shard: str, quarantine: OutputLayout | None = None, secret: bytes | None = None
) -> dict[str, Any]:
    """Build the shard's tar and audit from its fragments, publish them, then the marker; drop fragments.

    With ``quarantine``, the originals of samples that were held back go to ``<quarantine>/<shard>``,
    each with a ``raypipe-quarantine.json`` member saying why (that location holds real faces: keep
    it access-restricted). With ``secret`` (the run's fragment key) only authentic fragments are used,
    and the marker carries an HMAC.
    """
    rows: dict[int, dict[str, Any]] = {}
    total: int | None = None
    end_input: str | None = None
    paths = []
    for path, data in authentic_fragments(layout, shard, secret):
        paths.append(path)
        for row in pq.read_table(io.BytesIO(data)).to_pylist():
            if row["end"]:
                total, end_input = row["seq"], row.get("input")
            else:
                rows.setdefault(row["seq"], row)  # a retried write may commit a sample twice: same bytes
    if not is_complete(set(rows), total):
        raise RuntimeError(f"{shard}: fragments do not cover every sample yet ({len(rows)} of {total})")
    assert total is not None
    ordered = [rows[i] for i in range(total)]
    source = _input_of(shard, end_input, ordered)
    samples = [
        Sample(key=json.loads(r["audit"])["key"], members=list(zip(r["out_names"], r["out_data"])))
        for r in ordered
        if r["released"]
    ]
    records = [json.loads(r["audit"]) for r in ordered]
    tar = tar_bytes(samples)
    audit_buffer = io.BytesIO()
    pq.write_table(records_table(records), audit_buffer)
    audit = audit_buffer.getvalue()
    fs = layout.fs
    if quarantine is not None:
        _publish_quarantine(quarantine, shard, ordered)
    publish_bytes(fs, layout.tar(shard), tar)
    publish_bytes(fs, layout.audit(shard), audit)
    # The evidence is computed from the bytes just written, never read back from storage.
    written = audit_rows(audit)
    marker = {
        "shard": shard,
        "samples": total,
        "released": len(samples),
        "counts": status_counts(written),
        # For the run summary (the records are the evidence).
        "face_counts": face_counts(written),
        "faces_retried": faces_retried(written),
        "tar_sha256": hashlib.sha256(tar).hexdigest(),
        "audit_sha256": hashlib.sha256(audit).hexdigest(),
        "records_root": records_root(written),
        "config_hash": records[0]["config_hash"] if records else None,
        "input": source,
        # What the GPU actors recorded, for the run manifest (so the driver never reads audits back).
        "weight_hashes": next(
            (r["weight_hashes"] for r in records if r.get("weight_hashes") not in (None, "{}")), None
        ),
    }
    if secret is not None:
        marker[MARKER_MAC] = marker_mac(marker, secret)
    publish_bytes(fs, layout.done(shard), json.dumps(marker, indent=2, sort_keys=True).encode())
    for path in paths:
        delete(fs, path)
    log.info("%s finalized: %d samples, %d released", shard, total, len(samples))
    return marker


def _input_of(shard: str, end_input: str | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pinned input of a shard; every fragment must have read the same version of it."""
    end = json.loads(end_input) if end_input else None
    pinned = {k: v for k, v in end.items() if k != "sha256"} if end else None
    seen: set[str] = {str(row.get("input") or "") for row in rows}
    identities = [json.loads(value) if value else None for value in seen]
    if any(identity != pinned for identity in identities):
        raise RuntimeError(
            f"{shard}: its fragments were read from different versions of the input shard; "
            "rerun the same command to restart that shard"
        )
    return end


def _publish_quarantine(quarantine: OutputLayout, shard: str, rows: list[dict[str, Any]]) -> None:
    """Every held-back original, under a key of its own: a shard may repeat a key (a, b, a), and two
    held samples with one key side by side would be merged by every reader (and refused by write_tar).
    A repeated key becomes ``<key>_seq<N>`` (N: the sample's position); its note keeps the real names."""

    def renamed(name: str, suffix: str) -> str:  # dir/a.seg.png -> dir/a<suffix>.seg.png
        folder, base = posixpath.split(name)
        stem, dot, ext = base.partition(".")
        return posixpath.join(folder, stem + suffix) + dot + ext

    held = []
    records = [json.loads(row["audit"]) for row in rows]
    taken = {record["key"] for record in records}  # a new key must not be one the shard uses itself
    used: set[str] = set()
    for row, record in zip(rows, records):
        if row["released"] or not row["held_names"]:
            continue
        note = {k: record[k] for k in ("key", "status", "error", "error_step", "faces", "missed_faces")}
        key, names = record["key"], list(row["held_names"])
        if key in used:
            suffix = f"_seq{row['seq']}"
            while key + suffix in taken | used:
                suffix += "_"
            note |= {"seq": row["seq"], "members": names}
            key, names = key + suffix, [renamed(name, suffix) for name in names]
        used.add(key)
        members = list(zip(names, row["held_data"]))
        members.append((f"{key}.{QUARANTINE_NOTE}", json.dumps(note, sort_keys=True).encode()))
        held.append(Sample(key=key, members=members))
    if held:
        publish_bytes(quarantine.fs, quarantine.tar(shard), tar_bytes(held))
