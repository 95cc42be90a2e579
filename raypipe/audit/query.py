"""``raypipe audit query OUTPUT "SQL"``: SQL over a run's audit records, with DuckDB.

Two tables are there to query:

- ``audit``: one row per input sample, the columns of the audit schema (``raypipe/audit/schema.py``),
  with ``faces`` as a list of structs;
- ``faces``: one row per face, with the sample's ``key``, ``source_shard``, ``output_shard`` and
  ``status`` (as ``sample_status``) beside the face's own fields (``face_index``, ``status``,
  ``distance``, ``attempts``, ``yaw_change``, ...).

The audit files are read through raypipe's storage layer (local folders, ``s3://``, ``gs://``) into
Arrow tables that DuckDB queries in memory, so no DuckDB extension and no network access is needed.
The shards read are those of the signed manifest (or, before there is one, those with a completion
marker). This states what the records say; ``raypipe audit verify`` checks that they are unchanged.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from raypipe.audit.manifest import finished_shards, read_manifest
from raypipe.audit.schema import AUDIT_SCHEMA, FACE_TYPE
from raypipe.io.publish import exists, read_bytes
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout

# The documented one-liners (README, ``raypipe audit query --examples``); each is a test.
EXAMPLES = {
    "samples per status": "SELECT status, count(*) AS samples FROM audit GROUP BY status ORDER BY status",
    "quarantined keys with their reasons": (
        "SELECT source_shard, key, error_step, error FROM audit WHERE status = 'quarantined' ORDER BY source_shard, key"
    ),
    "faces whose head pose changed by more than 10 degrees": (
        "SELECT key, face_index, yaw_change, pitch_change, roll_change FROM faces"
        " WHERE greatest(abs(yaw_change), abs(pitch_change), abs(roll_change)) > 10 ORDER BY key, face_index"
    ),
    "faces that needed retries, or were obscured": (
        "SELECT status, count(*) AS faces, max(attempts) AS most_attempts FROM faces"
        " WHERE attempts > 1 OR status = 'obscured' GROUP BY status"
    ),
}

SAMPLE_COLUMNS = ("key", "source_shard", "output_shard", "status")


def audit_table(root: str, options: StorageOptions | None = None) -> pa.Table:
    """Every audit record of OUTPUT ``root`` as one Arrow table, in shard order."""
    import pyarrow.parquet as pq

    layout = OutputLayout(root, options or StorageOptions())
    tables = []
    for shard in finished_shards(layout, read_manifest(layout)):
        path = layout.audit(shard)
        if exists(layout.fs, path):
            tables.append(pq.read_table(pa.BufferReader(read_bytes(layout.fs, path))).select(AUDIT_SCHEMA.names))
    if not tables:
        return AUDIT_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def faces_table(audit: pa.Table) -> pa.Table:
    """One row per face of ``audit``: the sample's key, shards and status, then the face's fields."""
    rows: dict[str, list[Any]] = {name: [] for name in SAMPLE_COLUMNS}
    rows["sample_status"] = rows.pop("status")
    face_names = [f.name for f in FACE_TYPE]
    for name in face_names:
        rows["face_index" if name == "index" else name] = []
    for record in audit.select([*SAMPLE_COLUMNS, "faces"]).to_pylist():
        for face in record["faces"] or []:
            for name in SAMPLE_COLUMNS:
                rows["sample_status" if name == "status" else name].append(record[name])
            for name in face_names:
                rows["face_index" if name == "index" else name].append(face.get(name))
    fields = [pa.field(name, pa.string()) for name in ("key", "source_shard", "output_shard", "sample_status")]
    fields += [pa.field("face_index" if f.name == "index" else f.name, f.type) for f in FACE_TYPE]
    return pa.table(rows, schema=pa.schema(fields))


def query(root: str, sql: str, options: StorageOptions | None = None) -> pa.Table:
    """The result of ``sql`` over the tables ``audit`` and ``faces`` of OUTPUT ``root``."""
    import duckdb

    audit = audit_table(root, options)
    faces = faces_table(audit)
    connection = duckdb.connect()  # in memory, nothing persisted
    try:
        connection.register("audit", audit)
        connection.register("faces", faces)
        result = connection.sql(sql)
        return result.to_arrow_table() if result is not None else pa.table({})  # a statement, not a query
    finally:
        connection.close()


def render(table: pa.Table, limit: int = 1000) -> str:
    """``table`` as aligned text columns (the first ``limit`` rows), for the terminal."""
    names = table.column_names
    rows = [["" if v is None else str(v) for v in row.values()] for row in table.slice(0, limit).to_pylist()]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    if table.num_rows > limit:
        lines.append(f"... {table.num_rows - limit} more rows (use --format csv or parquet for all of them)")
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(lines)
