"""The Ray job on local folders: same shard layout out, faces anonymized, everything else untouched."""

from __future__ import annotations

import glob
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.audit.signing import parse_key
from raypipe.audit.verify import verify_output
from raypipe.config import ConfigError
from raypipe.layout import audit_name, done_name
from raypipe.pipeline.run import run
from raypipe.status import output_status
from tests.helpers import face_regions
from tests.integration.jobs import (
    TEST_METHOD,
    job_config,
    parquet_tables,
    read_audit,
    read_tar,
    sample_shards,
    uniform_shards,
)

pytestmark = [pytest.mark.isolated, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name, data in sample_shards().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def finished(ray_local, inputs: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    config = job_config(str(inputs / "part-{00000..00002}.tar"), str(out))
    return run(config), out, config


def test_every_shard_comes_out_with_the_same_name_keys_and_order(finished, inputs: Path) -> None:
    summary, out, _ = finished
    assert summary.ok and summary.shards_done == 3 and summary.samples_processed == 15
    assert summary.counts == {"anonymized": 3, "no_face": 12}
    assert summary.faces.get("anonymized") == 3 and summary.faces.get("reidentified") is None
    names = sorted(p.name for p in inputs.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == names
    for name in names:
        original = read_tar((inputs / name).read_bytes())
        produced = read_tar((out / name).read_bytes())
        assert [s.key for s in produced] == [s.key for s in original]
        assert [s.names for s in produced] == [s.names for s in original]


def test_non_image_members_and_faceless_images_are_byte_identical(finished, inputs: Path) -> None:
    _, out, _ = finished
    for name in ("part-00000.tar", "part-00001.tar", "part-00002.tar"):
        for original, produced in zip(read_tar((inputs / name).read_bytes()), read_tar((out / name).read_bytes())):
            for (member, data), (_, new) in zip(original.members, produced.members):
                if not member.endswith(".png"):  # the png member is the one portrait per shard
                    assert new == data, member


def test_anonymized_images_differ_only_inside_face_regions(finished, inputs: Path) -> None:
    _, out, _ = finished
    original = read_tar((inputs / "part-00001.tar").read_bytes())[0]
    produced = read_tar((out / "part-00001.tar").read_bytes())[0]
    before = np.asarray(Image.open(io.BytesIO(original.members[0][1])).convert("RGB"))
    after = np.asarray(Image.open(io.BytesIO(produced.members[0][1])).convert("RGB"))
    assert after.shape == before.shape
    region = face_regions(before, TEST_METHOD["face_size"])
    assert region.any()
    assert np.array_equal(after[~region], before[~region])
    assert np.abs(after[region].astype(int) - before[region].astype(int)).mean() > 2.0


def test_one_audit_record_per_input_sample(finished, inputs: Path) -> None:
    _, out, _ = finished
    for name in ("part-00000.tar", "part-00001.tar", "part-00002.tar"):
        records = read_audit((out / audit_name(name)).read_bytes())
        original = read_tar((inputs / name).read_bytes())
        assert [r["key"] for r in records] == [s.key for s in original]
        assert [r["seq"] for r in records] == list(range(5))
        first = records[0]
        assert first["status"] == "anonymized" and first["faces_count"] == 1
        assert first["members"] == original[0].names
        assert first["output_sha256"] and first["output_sha256"] != first["input_sha256"]
        assert first["faces"][0]["status"] == "anonymized" and len(first["faces"][0]["box"]) == 4
        assert all(r["status"] == "no_face" and r["output_sha256"] == r["input_sha256"] for r in records[1:])
        assert all(r["source_shard"].endswith(name) and r["config_hash"] for r in records)
        assert (out / done_name(name)).is_file()


def test_rerun_of_a_finished_job_skips_everything(finished) -> None:
    _, out, config = finished
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    again = run(config)
    assert again.shards_skipped == 3 and again.samples_processed == 0 and again.ok
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_a_different_config_on_the_same_output_is_refused(finished, inputs: Path) -> None:
    _, out, _ = finished
    other = job_config(str(inputs / "part-{00000..00002}.tar"), str(out), method={"guidance_scale": -5.0})
    with pytest.raises(ConfigError, match="different configuration"):
        run(other)


def test_status_reports_done_shards_and_counts(finished) -> None:
    _, out, _ = finished
    report = output_status(str(out))
    assert sorted(report.done) == ["part-00000.tar", "part-00001.tar", "part-00002.tar"]
    assert report.pending == {} and report.counts == {"anonymized": 3, "no_face": 12}
    assert "3/3 shards done" in report.render()


def test_readers_open_the_output_folder_as_it_is(ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """webdataset, Ray Data and Hugging Face datasets each read OUTPUT as raypipe leaves it: the audits,
    markers and manifest under ``.raypipe/`` are not taken for shards."""
    import datasets
    import ray
    import webdataset as wds

    monkeypatch.setenv("RAYPIPE_AUDIT_KEY", "5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8")  # so the manifest is there too
    (tmp_path / "in").mkdir()
    for name, data in uniform_shards().items():
        (tmp_path / "in" / name).write_bytes(data)
    out = tmp_path / "out"
    assert run(job_config(str(tmp_path / "in" / "part-{00000..00001}.tar"), str(out))).ok
    assert (out / ".raypipe" / "manifest.json").is_file() and (out / audit_name("part-00000.tar")).is_file()
    produced = {
        s.key: s.members[0][1]
        for name in sorted(p.name for p in out.glob("*.tar"))
        for s in read_tar((out / name).read_bytes())
    }
    assert len(produced) == 6

    # webdataset takes a list of shards: what the shell's OUTPUT/* gives (glob skips dot folders too)
    tars = sorted(glob.glob(str(out / "*")))
    read = {s["__key__"]: s["jpg"] for s in wds.WebDataset(tars, shardshuffle=False)}
    assert read == produced

    rows = ray.data.read_webdataset(str(out), decoder=None).take_all()
    assert {row["__key__"]: row["jpg"] for row in rows} == produced

    hf = datasets.load_dataset("webdataset", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(hf["__key__"]) == sorted(produced)
    first = hf[[k for k in hf["__key__"]].index("00000000")]["jpg"]
    assert np.array_equal(
        np.asarray(first.convert("RGB")), np.asarray(Image.open(io.BytesIO(produced["00000000"])).convert("RGB"))
    )


def test_parquet_tables_come_out_as_tables_their_readers_open(ray_local, tmp_path: Path, monkeypatch) -> None:
    """A folder of Parquet tables in, the same tables out: faces anonymized, the other column, the row
    order and the schema kept, OUTPUT opened as it is by pyarrow, Ray Data and Hugging Face datasets, and
    a second run redoes nothing."""
    import datasets
    import pyarrow.parquet as pq
    import ray

    monkeypatch.setenv("RAYPIPE_AUDIT_KEY", "5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8")
    (tmp_path / "in").mkdir()
    tables = parquet_tables()
    for name, data in tables.items():
        (tmp_path / "in" / name).write_bytes(data)
    out = tmp_path / "out"
    summary = run(job_config(str(tmp_path / "in"), str(out)))
    assert summary.ok and summary.shards_done == 2 and summary.counts == {"anonymized": 2, "no_face": 4}
    for name, data in tables.items():
        before, after = pq.read_table(io.BytesIO(data)), pq.read_table(out / name)
        assert after.schema == before.schema and after.schema.metadata == before.schema.metadata
        assert after.column("text").to_pylist() == before.column("text").to_pylist()
        images = [row["bytes"] for row in after.column("image").to_pylist()]
        originals = [row["bytes"] for row in before.column("image").to_pylist()]
        assert images[0] != originals[0] and images[1:] == originals[1:]  # the portrait's face replaced
    assert verify_output(str(out), parse_key(b"5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8", "test")).ok

    texts = sorted(f"row {t}-{i}" for t in range(2) for i in range(3))
    assert sorted(pq.read_table(str(out)).column("text").to_pylist()) == texts  # .raypipe/ is skipped
    assert sorted(row["text"] for row in ray.data.read_parquet(str(out)).take_all()) == texts
    hf = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(hf["text"]) == texts
    first = next(row for row in hf if row["text"] == "row 0-0")["image"]  # decoded by the Image feature
    assert first.size == (512, 512)

    again = run(job_config(str(tmp_path / "in"), str(out)))
    assert again.ok and again.samples_processed == 0 and again.shards_skipped == 2


def test_a_tree_of_files_comes_out_as_the_same_tree_its_readers_open(ray_local, tmp_path: Path, monkeypatch) -> None:
    """A folder of image files with a subfolder in, the same tree out: the portrait anonymized, the other
    files byte for byte, OUTPUT opened as it is by Hugging Face's imagefolder and Ray Data's read_images
    (``.raypipe/`` is skipped), verified, and a second run redoes nothing."""
    import datasets
    import ray

    from tests.unit.pipeline.test_file_trees import make_tree

    monkeypatch.setenv("RAYPIPE_AUDIT_KEY", "5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8")
    given = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    summary = run(job_config(str(tmp_path / "in"), str(out)))
    assert not summary.incomplete_shards and summary.shards_done == 3
    assert summary.counts == {"anonymized": 1, "failed": 1, "no_face": 2}  # the zipped portrait is held
    assert (out / "astronaut.png").read_bytes() != given["astronaut.png"]
    for name in ("astronaut.json", "sub/coffee.jpg", "sub/notes.txt"):
        assert (out / name).read_bytes() == given[name]
    assert not (out / "sub/deeper").exists() and not (out / ".hidden").exists()
    assert verify_output(str(out), parse_key(b"5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8", "test")).ok

    hf = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(image.size for image in hf["image"]) == sorted([(512, 512), Image.open(out / "sub/coffee.jpg").size])
    assert len(ray.data.read_images(str(out)).take_all()) == 2

    again = run(job_config(str(tmp_path / "in"), str(out)))
    assert again.samples_processed == 0 and again.shards_skipped == 3


def test_overwrite_replaces_results_of_another_config(ray_local, inputs: Path, tmp_path: Path) -> None:
    config = job_config(str(inputs / "part-00000.tar"), str(tmp_path))
    assert run(config).ok
    other = job_config(str(inputs / "part-00000.tar"), str(tmp_path), method={"seed": 5})
    summary = run(other, overwrite=True)
    assert summary.ok and summary.samples_processed == 5


def test_output_inside_the_input_folder_is_refused(ray_local, inputs: Path) -> None:
    with pytest.raises(ConfigError, match="would overwrite the input shard"):
        run(job_config(str(inputs / "part-00000.tar"), str(inputs)))
