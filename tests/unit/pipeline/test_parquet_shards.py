"""Parquet tables through the job's stages (without Ray): real decode, dlib detection, tiny diffusion,
the gate, fragments, finalize, the signed manifest, verify and the report, as for tars. The output
table keeps every other column, the row order and the schema; a row that is not released is left out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from raypipe.audit.report import render_report
from raypipe.audit.verify import verify_output
from raypipe.config import AuditConfig, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.io.storage import StorageOptions
from raypipe.io.tables import QUARANTINE_COLUMN
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, committed_positions, finalize_shard
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Anonymize, Compose, Decode
from tests.integration.jobs import jpeg, png, read_audit
from tests.unit.pipeline.stages_run import KEY, run_stages

MODELS = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
METHOD = MethodConfig(num_steps=6, face_size=128)
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # Hugging Face's Image feature
SCHEMA = pa.schema(
    [("id", pa.int64()), ("image", IMAGE), ("caption", pa.string()), ("tags", pa.list_(pa.string()))],
    metadata={b"huggingface": b'{"info": {"features": {}}}'},
)


def table_rows() -> list[dict]:
    portrait = png(np.ascontiguousarray(data.astronaut()))
    coffee = jpeg(np.ascontiguousarray(data.coffee()))
    return [
        {"id": 10, "image": {"bytes": portrait, "path": "astronaut.png"}, "caption": "a portrait", "tags": ["a"]},
        {"id": 11, "image": {"bytes": coffee, "path": "coffee.jpg"}, "caption": "a cup", "tags": []},
        {"id": 12, "image": {"bytes": None, "path": "/data/elsewhere.jpg"}, "caption": "by path", "tags": None},
        {"id": 13, "image": None, "caption": "no picture", "tags": ["b", "c"]},
    ]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows(), schema=SCHEMA), path, row_group_size=3, compression="zstd")
    return path


@pytest.fixture(scope="module")
def anonymize() -> Anonymize:
    return Anonymize(MODELS, METHOD, LimitsConfig(), detect=True).ready()


def test_a_table_comes_out_anonymized_with_its_other_columns_and_schema(
    table: Path, anonymize: Anonymize, tmp_path: Path
) -> None:
    out, held_at = tmp_path / "out", tmp_path / "held"
    run_stages(table, out, anonymize, quarantine=held_at)
    records = read_audit((out / ".raypipe/shards/train-00000.parquet.audit.parquet").read_bytes())
    assert [(r["key"], r["status"]) for r in records] == [
        ("00000000", "anonymized"),
        ("00000001", "no_face"),
        ("00000002", "failed"),
        ("00000003", "no_face"),
    ]
    assert "refers to a picture by path ('/data/elsewhere.jpg')" in records[2]["error"]

    written = pq.read_table(out / "train-00000.parquet")
    assert written.schema == SCHEMA and written.schema.metadata == SCHEMA.metadata  # HF features kept
    rows, given = written.to_pylist(), table_rows()
    assert [row["id"] for row in rows] == [10, 11, 13]  # input order, the unreleased row left out
    for row, original in zip(rows, [given[0], given[1], given[3]]):
        assert {k: v for k, v in row.items() if k != "image"} == {k: v for k, v in original.items() if k != "image"}
    assert rows[0]["image"]["path"] == "astronaut.png" and rows[0]["image"]["bytes"] != given[0]["image"]["bytes"]
    anonymized = np.asarray(Image.open(io.BytesIO(rows[0]["image"]["bytes"])))
    assert anonymized.shape == data.astronaut().shape  # same picture, faces replaced
    assert rows[1]["image"] == given[1]["image"] and rows[2]["image"] is None  # faceless: byte for byte

    quarantined = pq.read_table(held_at / "train-00000.parquet").to_pylist()
    assert [row["id"] for row in quarantined] == [12]
    assert json.loads(quarantined[0][QUARANTINE_COLUMN])["status"] == "failed"

    verified = verify_output(str(out), KEY)
    assert verified.ok, verified.problems
    html = render_report(str(out), tmp_path / "report.html", gallery=5).read_text()
    assert "Gallery of released faces (1 of at most 5)" in html  # cropped from the output table
    assert "00000000" in html[html.index("Gallery of released faces") :]


def test_verify_finds_a_changed_or_dropped_row_in_an_output_table(
    table: Path, anonymize: Anonymize, tmp_path: Path
) -> None:
    run_stages(table, tmp_path, anonymize)
    output = tmp_path / "train-00000.parquet"
    rows = pq.read_table(output).to_pylist()

    swapped = [rows[1], rows[0], rows[2]]  # same bytes, other order
    pq.write_table(pa.Table.from_pylist(swapped, schema=SCHEMA), output)
    result = verify_output(str(tmp_path), KEY)
    assert not result.ok
    assert any(p.kind == "modified" and p.where == "train-00000.parquet key=00000000" for p in result.problems)

    pq.write_table(pa.Table.from_pylist(rows[:2], schema=SCHEMA), output)
    result = verify_output(str(tmp_path), KEY)
    assert any(p.kind == "missing" and p.where == "train-00000.parquet key=00000003" for p in result.problems)


def test_a_table_resumed_after_some_rows_were_committed_comes_out_the_same(
    table: Path, anonymize: Anonymize, tmp_path: Path
) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_stages(table, whole, anonymize)
    layout, run = OutputLayout(str(resumed)), RunInfo(config_hash="c" * 64, code_version="test", method={})

    def process(work: ShardWork) -> list:
        tasks = list(shard_tasks(work, StorageOptions(), LimitsConfig()))
        return Compose(AuditConfig()).ready()(anonymize(Decode(LimitsConfig())(tasks)))

    first = [t for t in process(ShardWork(str(table), table.name)) if not t.end_of_shard][:2]
    commit_fragment(layout, table.name, first, run)  # a run that died after two rows
    committed, _ = committed_positions(layout, table.name)
    rest = process(ShardWork(str(table), table.name, committed))
    assert [t.seq for t in rest] == [2, 3, 4]  # rows 2 and 3, then the end marker
    commit_fragment(layout, table.name, rest, run)
    finalize_shard(layout, table.name, source=str(table))
    assert (resumed / table.name).read_bytes() == (whole / table.name).read_bytes()
    audit = ".raypipe/shards/train-00000.parquet.audit.parquet"
    strip = ("timings", "provenance", "processed_at")
    assert [{k: v for k, v in r.items() if k not in strip} for r in read_audit((resumed / audit).read_bytes())] == [
        {k: v for k, v in r.items() if k not in strip} for r in read_audit((whole / audit).read_bytes())
    ]


def test_a_refused_table_finalizes_empty_verifies_and_its_rows_go_to_the_quarantine(
    anonymize: Anonymize, tmp_path: Path
) -> None:
    portrait = table_rows()[0]["image"]
    values = {
        "image": [portrait, portrait],
        "pixels": [[1, 2, 3], [4]],  # a list of 8-bit integers: maybe raw pixels, never copied
        QUARANTINE_COLUMN: ["the input's own", "column"],
    }
    schema = pa.schema([("image", IMAGE), ("pixels", pa.list_(pa.uint8())), (QUARANTINE_COLUMN, pa.string())])
    path = tmp_path / "in" / "refused.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table(values, schema=schema), path)
    run_stages(path, tmp_path / "out", anonymize, quarantine=tmp_path / "held")
    assert pq.read_table(tmp_path / "out" / "refused.parquet").num_rows == 0
    verified = verify_output(str(tmp_path / "out"), KEY)
    assert verified.ok, verified.problems
    held = pq.read_table(tmp_path / "held" / "refused.parquet").to_pylist()
    assert [row["image"] for row in held] == values["image"]  # the originals, as they were
    assert [row[QUARANTINE_COLUMN] for row in held] == values[QUARANTINE_COLUMN]  # the input's column kept
    assert all(json.loads(row[QUARANTINE_COLUMN + "_"])["status"] == "failed" for row in held)
