"""``verify`` passes on a fresh run and names the problem after each kind of tampering."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from raypipe.audit.signing import Key, parse_key
from raypipe.audit.verify import Problem, VerifyReport, verify_output
from raypipe.io.tars import Sample, read_tar, tar_bytes
from raypipe.layout import OutputLayout

from .conftest import HMAC_SECRET, SignedOutput, audit_bytes, sample_key, sidecars


def rows_of(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(path.read_bytes())).to_pylist()


def rewrite_audit(layout: OutputLayout, shard_stem: str, rows: list[dict[str, Any]]) -> None:
    rows = [{k: v for k, v in row.items() if k != "schema_version"} for row in rows]
    Path(layout.root, f".raypipe/shards/{shard_stem}.audit.parquet").write_bytes(audit_bytes(rows))


def find(report: VerifyReport, kind: str, where: str) -> Problem:
    """The problem of this kind at this place (all their details joined, when there are several)."""
    found = [p for p in report.problems if p.kind == kind and p.where == where]
    assert found, f"no {kind} problem at {where!r} in:\n{report.render()}"
    return Problem(kind, where, " | ".join(p.detail for p in found))


@pytest.fixture(params=["hmac", "ed25519"])
def key(request: pytest.FixtureRequest, ed25519_key: Key) -> Key:
    return parse_key(HMAC_SECRET, "test") if request.param == "hmac" else ed25519_key


@pytest.fixture
def output(signed_output: SignedOutput, key: Key) -> OutputLayout:
    return signed_output(key)


def test_a_fresh_run_verifies(output: OutputLayout, key: Key) -> None:
    report = verify_output(output.root, key)
    assert report.ok, report.render()
    assert report.render().startswith("OK ")
    assert report.shards == 2 and report.samples == 6
    assert report.counts == {"anonymized": 2, "no_face": 2, "quarantined": 2}


def test_a_changed_audit_value_is_named(output: OutputLayout, key: Key) -> None:
    # Hide a re-identification: raise the quarantined face's distance in shard 0.
    path = Path(output.root, ".raypipe/shards/data-00000.audit.parquet")
    rows = rows_of(path)
    rows[2]["faces"][0]["distance"] = 0.9
    rewrite_audit(output, "data-00000", rows)
    report = verify_output(output.root, key)
    assert "Merkle root" in find(report, "modified", ".raypipe/shards/data-00000.audit.parquet").detail
    assert report.kinds == {"modified"}
    assert all("data-00000" in p.where for p in report.problems)  # shard 1 is untouched


def test_a_changed_status_is_named_with_the_counts(output: OutputLayout, key: Key) -> None:
    path = Path(output.root, ".raypipe/shards/data-00001.audit.parquet")
    rows = rows_of(path)
    rows[2]["status"] = "anonymized"
    rewrite_audit(output, "data-00001", rows)
    report = verify_output(output.root, key)
    details = " ".join(p.detail for p in report.problems if p.where == ".raypipe/shards/data-00001.audit.parquet")
    assert "counts per status" in details and "Merkle root" in details
    # The audit now claims a released sample that the tar does not hold.
    find(report, "missing", f"data-00001.tar key={sample_key(1, 2)}")


def test_a_deleted_record_is_named(output: OutputLayout, key: Key) -> None:
    rows = rows_of(Path(output.root, ".raypipe/shards/data-00000.audit.parquet"))
    del rows[1]
    rewrite_audit(output, "data-00000", rows)
    report = verify_output(output.root, key)
    find(report, "missing", ".raypipe/shards/data-00000.audit.parquet seq=1")
    # Its sample is still in the tar, now without a record.
    find(report, "extra", f"data-00000.tar key={sample_key(0, 1)}")


def test_an_added_record_is_named(output: OutputLayout, key: Key) -> None:
    rows = rows_of(Path(output.root, ".raypipe/shards/data-00001.audit.parquet"))
    rows.append({**rows[2], "key": "intruder", "seq": 3})  # a quarantined one: no tar sample implied
    rewrite_audit(output, "data-00001", rows)
    report = verify_output(output.root, key)
    problem = find(report, "extra", ".raypipe/shards/data-00001.audit.parquet seq=3")
    assert "intruder" in problem.detail
    assert "missing" not in report.kinds


def test_reordered_records_and_samples_are_named(output: OutputLayout, key: Key) -> None:
    rows = rows_of(Path(output.root, ".raypipe/shards/data-00000.audit.parquet"))
    rewrite_audit(output, "data-00000", [rows[1], rows[0], rows[2]])
    samples = [s for s in read_tar(Path(output.root, "data-00001.tar").read_bytes()) if isinstance(s, Sample)]
    Path(output.root, "data-00001.tar").write_bytes(tar_bytes(samples[::-1]))
    report = verify_output(output.root, key)
    find(report, "reordered", ".raypipe/shards/data-00000.audit.parquet")
    find(report, "reordered", "data-00001.tar")
    assert not report.kinds & {"missing", "extra"}
    # Same records in another order: the values themselves still match the Merkle root.
    assert not any("Merkle" in p.detail for p in report.problems)


def test_a_flipped_tar_byte_is_named(output: OutputLayout, key: Key) -> None:
    path = Path(output.root, "data-00001.tar")
    data = bytearray(path.read_bytes())
    at = data.index(b"anonymized jpeg of") + 3
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_output(output.root, key)
    assert "sha256" in find(report, "modified", "data-00001.tar").detail
    assert "output_sha256" in find(report, "modified", f"data-00001.tar key={sample_key(1, 0)}").detail
    assert report.kinds == {"modified"}


def test_a_changed_manifest_field_breaks_the_signature(output: OutputLayout, key: Key) -> None:
    path = Path(output.state("manifest.json"))
    manifest = json.loads(path.read_text())
    manifest["run"]["method"]["guidance_scale"] = -1.0
    path.write_text(json.dumps(manifest, indent=2))
    report = verify_output(output.root, key)
    problem = find(report, "bad_signature", ".raypipe/manifest.json")
    assert "was changed" in problem.detail
    assert report.kinds == {"bad_signature"}


def test_reformatting_the_manifest_is_not_a_change(output: OutputLayout, key: Key) -> None:
    path = Path(output.state("manifest.json"))
    path.write_text(json.dumps(json.loads(path.read_text()), separators=(",", ":")))
    assert verify_output(output.root, key).ok


def test_a_changed_count_in_the_manifest_is_named_twice(output: OutputLayout, key: Key) -> None:
    path = Path(output.state("manifest.json"))
    manifest = json.loads(path.read_text())
    manifest["counts"]["quarantined"] = 0
    path.write_text(json.dumps(manifest))
    report = verify_output(output.root, key)
    find(report, "bad_signature", ".raypipe/manifest.json")
    assert "do not add up" in find(report, "modified", ".raypipe/manifest.json").detail


def test_a_wrong_key_is_named(output: OutputLayout, key: Key) -> None:
    wrong = parse_key(b"not the signing secret at all", "wrong")
    report = verify_output(output.root, wrong)
    assert report.kinds == {"bad_signature"}
    assert wrong.key_id in report.problems[0].detail and key.key_id in report.problems[0].detail


@pytest.mark.parametrize(
    "name",
    [
        "data-00001.tar",
        ".raypipe/shards/data-00001.audit.parquet",
        ".raypipe/shards/data-00001.done.json",
        ".raypipe/manifest.json",
    ],
)
def test_a_removed_file_is_named(output: OutputLayout, key: Key, name: str) -> None:
    Path(output.root, name).unlink()
    report = verify_output(output.root, key)
    find(report, "missing", name)
    assert report.kinds == {"missing"}


def test_unlisted_shard_files_are_extra(output: OutputLayout, key: Key) -> None:
    for source, copy in zip(sidecars("data-00000.tar"), sidecars("data-00009.tar"), strict=True):
        shutil.copy(Path(output.root, source), Path(output.root, copy))
    Path(output.root, "README.txt").write_text("anything planted under OUTPUT is named")
    report = verify_output(output.root, key)
    assert {p.where for p in report.problems} == {
        "data-00009.tar",
        ".raypipe/shards/data-00009.audit.parquet",
        ".raypipe/shards/data-00009.done.json",
        "README.txt",
    }
    assert report.kinds == {"extra"}


def test_a_quarantined_sample_in_the_tar_is_named(output: OutputLayout, key: Key) -> None:
    path = Path(output.root, "data-00000.tar")
    samples = [s for s in read_tar(path.read_bytes()) if isinstance(s, Sample)]
    leaked = Sample(sample_key(0, 2), [(f"{sample_key(0, 2)}.jpg", b"the original face")])
    path.write_bytes(tar_bytes([*samples, leaked]))
    report = verify_output(output.root, key)
    assert "never releasable" in find(report, "extra", f"data-00000.tar key={sample_key(0, 2)}").detail


def test_leftover_fragments_are_incomplete(output: OutputLayout, key: Key) -> None:
    folder = Path(output.root, ".raypipe", "fragments", "data-00002")
    folder.mkdir(parents=True)
    (folder / "000000000-abc.parquet").write_bytes(b"work in progress")
    report = verify_output(output.root, key)
    find(report, "incomplete", ".raypipe/fragments/data-00002")


def test_many_findings_in_one_file_are_summed_up(signed_output: SignedOutput, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    path = Path(layout.root, ".raypipe/shards/data-00000.audit.parquet")
    rows = rows_of(path)
    extra = [{**rows[0], "key": f"x{i}", "seq": 10 + i} for i in range(30)]
    rewrite_audit(layout, "data-00000", rows + extra)
    report = verify_output(layout.root, hmac_key)
    extras = [
        p for p in report.problems if p.kind == "extra" and p.where.startswith(".raypipe/shards/data-00000.audit")
    ]
    assert len(extras) == 21 and extras[-1].detail == "... and 10 more of the same kind"


def test_a_malformed_manifest_is_named_not_crashed_on(output: OutputLayout, key: Key) -> None:
    path = Path(output.state("manifest.json"))
    manifest = json.loads(path.read_text())
    manifest["shards"] = ["data-00000.tar"]
    path.write_text(json.dumps(manifest))
    report = verify_output(output.root, key)
    assert "malformed" in find(report, "modified", ".raypipe/manifest.json").detail
    find(report, "bad_signature", ".raypipe/manifest.json")
