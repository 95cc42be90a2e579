"""The audit record: one per input sample, one parquet file per output shard, versioned.

Deliberately absent: embeddings, crops, landmarks, keys, credentials. Faces are described by their
box, detector score, outcome, re-identification distance and utility deltas only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "3"  # 3: the method column

FACE_TYPE = pa.struct(
    [
        ("index", pa.int32()),
        ("box", pa.list_(pa.float32(), 4)),
        ("score", pa.float32()),
        ("status", pa.string()),
        ("seed", pa.uint64()),
        ("distance", pa.float32()),  # Euclidean, original vs released, independent recognizer
        ("threshold", pa.float32()),
        ("attempts", pa.int32()),
        ("guidance_scale", pa.float32()),
        # Utility: released minus original at the same box (raypipe.audit.utility), never the landmarks.
        ("yaw_change", pa.float32()),
        ("pitch_change", pa.float32()),
        ("roll_change", pa.float32()),
        ("landmark_drift", pa.float32()),
        ("eye_change", pa.float32()),
        ("mouth_change", pa.float32()),
        ("utility_flags", pa.list_(pa.string())),
        ("error", pa.string()),
    ]
)

AUDIT_SCHEMA = pa.schema(
    [
        ("schema_version", pa.string()),
        ("key", pa.string()),
        ("seq", pa.int64()),  # position of the sample in its input shard
        ("source_shard", pa.string()),  # input shard URI (credentials redacted)
        ("output_shard", pa.string()),  # output shard name, or null when the sample was not released
        ("members", pa.list_(pa.string())),  # input member names, in tar order
        ("input_sha256", pa.string()),
        ("output_sha256", pa.string()),  # null when not released
        ("status", pa.string()),
        ("faces_count", pa.int32()),
        ("faces", pa.list_(FACE_TYPE)),
        ("missed_faces", pa.int32()),  # faces found again in the output where none was anonymized
        ("error", pa.string()),
        ("error_step", pa.string()),
        ("method", pa.string()),  # method.name: reverse_personalization, blur, pixelate or mask
        # Reverse Personalization's settings; null for the classic methods, which have none.
        ("guidance_scale", pa.float32()),
        ("skip", pa.float32()),
        ("num_steps", pa.int32()),
        ("seed", pa.int64()),
        ("attribute_prompt", pa.string()),
        ("models", pa.string()),  # JSON: component -> id/URI
        ("weight_hashes", pa.string()),  # JSON: component -> sha256
        ("config_hash", pa.string()),
        ("code_version", pa.string()),
        ("detector", pa.string()),  # the face analyzer that found the faces
        ("recognizer", pa.string()),  # the gate's independent recognizer
        ("node", pa.string()),  # Ray node id
        ("device", pa.string()),
        ("timings", pa.string()),  # JSON: step -> seconds
    ],
    metadata={b"raypipe.audit.schema_version": SCHEMA_VERSION.encode()},
)

AUDIT_COLUMNS = tuple(AUDIT_SCHEMA.names)
# One record as a struct (every column but the version, which the file carries): how fragments hold it.
RECORD_TYPE = pa.struct([f for f in AUDIT_SCHEMA if f.name != "schema_version"])


@dataclass(kw_only=True)
class AuditRecord:
    """The audit record of one input sample, field for field the columns of :data:`AUDIT_SCHEMA`
    (a test keeps the two in step). JSON-valued columns (``models``, ``weight_hashes``, ``timings``)
    are strings here, as they are stored."""

    key: str
    seq: int
    source_shard: str
    output_shard: str | None = None
    members: list[str] = field(default_factory=list)
    input_sha256: str | None = None
    output_sha256: str | None = None  # set at finalize, from the bytes written to the output tar
    status: str
    faces_count: int = 0
    faces: list[dict[str, Any]] = field(default_factory=list)  # FACE_TYPE fields
    missed_faces: int = 0
    error: str | None = None
    error_step: str | None = None
    method: str | None = None
    guidance_scale: float | None = None
    skip: float | None = None
    num_steps: int | None = None
    seed: int | None = None
    attribute_prompt: str | None = None
    models: str = "{}"
    weight_hashes: str = "{}"
    config_hash: str | None = None
    code_version: str | None = None
    detector: str | None = None
    recognizer: str | None = None
    node: str | None = None
    device: str | None = None
    timings: str = "{}"

    def to_row(self) -> dict[str, Any]:
        """The record as a row of :data:`RECORD_TYPE` (plain values)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditRecord:
        """A record from a row read back (a fragment's struct or an audit parquet row)."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})


def sample_digest(members: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over a sample's members in order, each as name length, name, data length, data.

    Length prefixes make the encoding unambiguous: no two different member lists share a digest input.
    """
    digest = hashlib.sha256()
    for name, data in members:
        digest.update(member_header(name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def member_header(name: str, size: int) -> bytes:
    """What :func:`sample_digest` hashes before a member's data: name length, name, data length (so a
    member can be streamed into the digest)."""
    encoded = name.encode("utf-8")
    return len(encoded).to_bytes(8, "big") + encoded + size.to_bytes(8, "big")


def records_table(records: Sequence[AuditRecord]) -> pa.Table:
    """Audit records as a table in :data:`AUDIT_SCHEMA`'s columns."""
    rows = [record.to_row() for record in records]
    columns: dict[str, list[Any]] = {"schema_version": [SCHEMA_VERSION] * len(rows)}
    columns |= {name: [row[name] for row in rows] for name in AUDIT_COLUMNS[1:]}
    return pa.table(columns, schema=AUDIT_SCHEMA)
