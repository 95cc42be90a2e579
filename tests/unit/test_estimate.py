"""``raypipe estimate``: exact sizes from tar headers alone, faces from a random sample, priced rows."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from raypipe.cli import EXIT_OK, main
from raypipe.config import build_config
from raypipe.estimate import cost_table, estimate, index_shard
from raypipe.io.storage import StorageOptions
from raypipe.io.tars import iter_headers
from tests.integration.jobs import parquet_tables, sample_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name, data in sample_shards(shards=3, per_shard=5).items():  # one portrait per shard
        (folder / name).write_bytes(data)
    return folder


class CountingReads(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def test_the_headers_are_read_and_the_payloads_skipped(shards: Path) -> None:
    data = (shards / "part-00000.tar").read_bytes()
    handle = CountingReads(data)
    headers = list(iter_headers(handle, "part-00000.tar"))
    assert [h.name for h in headers][:3] == ["s0/00000.png", "s0/00000.json", "s0/00000.cls"]
    assert data[headers[0].offset : headers[0].offset + 8] == b"\x89PNG\r\n\x1a\n"  # where the bytes lie
    assert handle.read_bytes < 0.03 * len(data)  # 512-byte headers, not the images
    index = index_shard(str(shards / "part-00000.tar"), StorageOptions())
    assert index.samples == 5 and len(index.images) == 5 and index.bytes == sum(h.size for h in headers)


def test_sampling_every_image_counts_the_faces_exactly(shards: Path) -> None:
    config = build_config({"input": str(shards), "models": {"analyzer": "dlib"}}, {}, require_io=False)
    result = estimate(config, sample=100)
    assert (result.shards, result.samples, result.images) == (3, 15, 15)
    assert result.sampled == 15 and result.faces_sampled == 3
    assert result.faces == result.faces_low == result.faces_high == pytest.approx(3.0)  # nothing left to guess
    production = next(r for r in result.rows if r["profile"].startswith("production") and r["device"] == "H100 SXM")
    seconds = production["seconds_per_face"]
    assert production["hours"] == pytest.approx((3 * seconds[0] / 3600, 3 * seconds[1] / 3600))
    assert production["kind"] == "assumed"  # no GPU has measured it: the table says so
    assert "no payload was read" in result.render() and "not a measurement" in result.render()


def test_a_partial_sample_gives_an_interval_around_the_truth(shards: Path) -> None:
    config = build_config({"input": str(shards), "models": {"analyzer": "dlib"}}, {}, require_io=False)
    result = estimate(config, sample=8, seed=3)
    assert result.sampled == 8 and result.faces_low <= 3 <= result.faces_high
    assert result.faces_low >= result.faces_sampled  # never below the faces actually seen


def test_the_cli_prints_sizes_faces_and_a_price(shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", str(shards), "--analyzer", "dlib", "--sample", "4", "--price-per-gpu-hour", "2.5"]
    assert main(argv) == EXIT_OK
    shown = capsys.readouterr().out
    assert "3 shard(s), 15 samples, 15 images" in shown and "GPU-hours ($" in shown


def test_every_cost_row_names_its_kind_device_and_date() -> None:
    rows = cost_table()
    assert {row["kind"] for row in rows} <= {"measured", "assumed"}
    assert all(row["device"] and row["date"] and row["source"].startswith("benchmarks/results/") for row in rows)
    assert {row["profile"] for row in rows if row["method"] == "reverse_personalization"} == {
        "production",
        "fast",
        "preview",
    }


def test_tables_are_estimated_from_their_footers(tmp_path: Path) -> None:
    for name, data in parquet_tables(tables=2, rows=3).items():  # one portrait per table
        (tmp_path / name).write_bytes(data)
    index = index_shard(str(tmp_path / "train-00000-of-00002.parquet"), StorageOptions())
    assert index.samples == 3 and len(index.images) == 3 and index.exact
    config = build_config({"input": str(tmp_path), "models": {"analyzer": "dlib"}}, {}, require_io=False)
    result = estimate(config, sample=100)
    assert (result.shards, result.samples, result.images, result.sampled, result.faces_sampled) == (2, 6, 6, 6, 2)
    assert "exact: from tar headers, Parquet footers and folder listings" in result.render()


def test_a_table_that_is_not_parquet_is_counted_empty_and_named(tmp_path: Path, caplog) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not a table")
    config = build_config({"input": str(tmp_path), "models": {"analyzer": "dlib"}}, {}, require_io=False)
    result = estimate(config, sample=4)
    assert (result.shards, result.samples, result.images) == (1, 0, 0)
    assert "broken.parquet: not a readable Parquet table" in caplog.text


def test_a_tree_of_files_is_estimated_from_its_listing(tmp_path: Path) -> None:
    from tests.unit.pipeline.test_file_trees import make_tree

    make_tree(tmp_path / "in")
    config = build_config({"input": str(tmp_path / "in"), "models": {"analyzer": "dlib"}}, {}, require_io=False)
    result = estimate(config, sample=100)
    # three groups; four samples (the portrait with its metadata, the photo, the note, the zip); two images
    assert (result.shards, result.samples, result.images, result.sampled, result.faces_sampled) == (3, 4, 2, 2, 1)
