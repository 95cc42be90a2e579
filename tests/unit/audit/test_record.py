"""The audit record is one dataclass, field for field the audit parquet's columns."""

from __future__ import annotations

import dataclasses
import io

import pyarrow.parquet as pq

from raypipe.audit.manifest import audit_rows
from raypipe.audit.schema import AUDIT_COLUMNS, AUDIT_SCHEMA, RECORD_TYPE, SCHEMA_VERSION, AuditRecord, records_table

FACE = {
    "index": 0,
    "box": [1.0, 2.0, 30.0, 40.0],
    "score": 0.5,
    "status": "anonymized",
    "seed": 2**63 + 5,  # uint64: seeds above int64 survive
    "distance": 0.75,
    "threshold": 0.625,  # float32 columns: exactly representable values
    "attempts": 2,
    "guidance_scale": -10.0,
    "yaw_change": 1.5,
    "pitch_change": None,
    "roll_change": None,
    "landmark_drift": 0.015625,
    "eye_change": None,
    "mouth_change": None,
    "utility_flags": ["pose"],
    "error": None,
}


def test_the_dataclass_and_the_schema_have_the_same_columns_in_the_same_order() -> None:
    names = [f.name for f in dataclasses.fields(AuditRecord)]
    assert ["schema_version", *names] == list(AUDIT_COLUMNS)
    assert [f.name for f in RECORD_TYPE] == names


def test_a_record_written_in_the_schemas_columns_reads_back_equal() -> None:
    record = AuditRecord(
        key="k0",
        seq=3,
        source_shard="s3://b/in/a.tar",
        output_shard="a.tar",
        members=["k0.jpg", "k0.json"],
        input_sha256="a" * 64,
        output_sha256="b" * 64,
        status="anonymized",
        faces_count=1,
        faces=[FACE],
        models='{"sdxl": "x"}',
        timings='{"decode": 0.1}',
    )
    buffer = io.BytesIO()
    pq.write_table(records_table([record, AuditRecord(key="k1", seq=4, source_shard="a", status="failed")]), buffer)
    table = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert table.schema.names == list(AUDIT_COLUMNS) and table.schema.metadata == AUDIT_SCHEMA.metadata
    assert table.cast(AUDIT_SCHEMA).schema.equals(AUDIT_SCHEMA)  # parquet names list items "element"
    rows = audit_rows(buffer.getvalue())
    assert rows[0]["schema_version"] == SCHEMA_VERSION
    assert AuditRecord.from_row(rows[0]) == record
    assert AuditRecord.from_row(rows[1]).faces == [] and rows[1]["output_shard"] is None
