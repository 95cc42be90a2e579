"""The audit record: one per input sample, one parquet file per output shard, versioned.

Deliberately absent: embeddings, crops, landmarks, keys, credentials. Faces are described by their
box, detector score, outcome, re-identification distance and utility deltas only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "2"

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


def sample_digest(members: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over a sample's members in order, each as name length, name, data length, data.

    Length prefixes make the encoding unambiguous: no two different member lists share a digest input.
    """
    digest = hashlib.sha256()
    for name, data in members:
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def records_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Audit records (dicts with the schema's columns) as a table; missing columns are null."""
    columns = {name: [r.get(name) for r in records] for name in AUDIT_COLUMNS}
    columns["schema_version"] = [SCHEMA_VERSION] * len(records)
    return pa.table(columns, schema=AUDIT_SCHEMA)
