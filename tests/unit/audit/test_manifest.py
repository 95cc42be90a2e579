"""The run manifest: what it commits to, how resumed runs chain, and what it refuses to sign."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from raypipe.audit.manifest import (
    ManifestError,
    audit_rows,
    build_manifest,
    manifest_digest,
    record_leaf,
    write_manifest,
)
from raypipe.audit.merkle import inclusion_proof, leaf_hash, verify_inclusion
from raypipe.audit.signing import Key
from raypipe.audit.verify import verify_output

from .conftest import RUN, SignedOutput, make_output, shard_contents, shard_names, write_shard


def test_manifest_commits_to_files_counts_and_every_record(signed_output: SignedOutput, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    manifest = json.loads(Path(layout.state("manifest.json")).read_text())
    assert manifest["sequence"] == 1 and manifest["previous"] is None
    assert manifest["counts"] == {"anonymized": 2, "no_face": 2, "quarantined": 2}
    assert manifest["samples"] == 6 and manifest["released"] == 4
    for shard in shard_names():
        marker = json.loads(Path(layout.done(shard)).read_text())
        entry = manifest["shards"][shard]
        assert {k: entry[k] for k in ("tar_sha256", "audit_sha256", "samples", "released", "counts")} == {
            k: marker[k] for k in ("tar_sha256", "audit_sha256", "samples", "released", "counts")
        }
    assert manifest["run"] == RUN
    # One record can be proven against the signed root without handing out the others.
    rows = [row for shard in shard_names() for row in audit_rows(Path(layout.audit(shard)).read_bytes())]
    hashes = [leaf_hash(record_leaf(row)) for row in rows]
    root = bytes.fromhex(manifest["records"]["merkle_root"])
    assert manifest["records"]["count"] == len(rows) == 6
    proof = inclusion_proof(hashes, 4)
    assert verify_inclusion(hashes[4], 4, len(hashes), proof, root)
    changed = {**rows[4], "status": "anonymized"}
    assert not verify_inclusion(leaf_hash(record_leaf(changed)), 4, len(hashes), proof, root)


def test_a_resumed_run_chains_to_the_previous_manifest(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out", shards=1)
    first = write_manifest(layout, build_manifest(layout, shard_names(1), dict(RUN)), hmac_key)
    # The resumed run finalizes one more shard and covers both.
    records, samples = shard_contents(1)
    write_shard(Path(layout.root), "data-00001.tar", records, samples)
    second = write_manifest(layout, build_manifest(layout, shard_names(2), dict(RUN)), hmac_key)
    assert second["sequence"] == 2 and second["previous"] == manifest_digest(first)
    history = Path(layout.state("manifests/000001.json"))
    assert json.loads(history.read_text()) == first
    report = verify_output(layout.root, hmac_key)
    assert report.ok, report.render()
    assert report.sequence == 2 and report.samples == 6


@pytest.fixture
def chained(tmp_path: Path, hmac_key: Key) -> Path:
    layout = make_output(tmp_path / "out")
    for _ in range(3):
        write_manifest(layout, build_manifest(layout, shard_names(), dict(RUN)), hmac_key)
    return Path(layout.root)


def test_a_broken_link_is_named(chained: Path, hmac_key: Key) -> None:
    path = chained / "_raypipe/manifests/000001.json"
    earlier = json.loads(path.read_text())
    earlier["created"] = "2000-01-01T00:00:00Z"  # rewrite history
    path.write_text(json.dumps(earlier))
    report = verify_output(str(chained), hmac_key)
    wheres = {(p.kind, p.where) for p in report.problems}
    assert ("broken_chain", "_raypipe/manifests/000002.json") in wheres
    assert ("bad_signature", "_raypipe/manifests/000001.json") in wheres
    assert report.kinds == {"broken_chain", "bad_signature"}


def test_a_removed_history_manifest_is_named(chained: Path, hmac_key: Key) -> None:
    (chained / "_raypipe/manifests/000002.json").unlink()
    report = verify_output(str(chained), hmac_key)
    assert [(p.kind, p.where) for p in report.problems] == [("missing", "_raypipe/manifests/000002.json")]


def test_a_copy_left_by_an_interrupted_write_is_accepted(chained: Path, hmac_key: Key) -> None:
    shutil.copy(chained / "_raypipe/manifest.json", chained / "_raypipe/manifests/000003.json")
    assert verify_output(str(chained), hmac_key).ok


def test_a_manifest_is_only_written_on_top_of_the_one_it_was_built_on(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    stale = build_manifest(layout, shard_names(), dict(RUN))
    write_manifest(layout, build_manifest(layout, shard_names(), dict(RUN)), hmac_key)  # another writer
    with pytest.raises(ManifestError, match="not the one this manifest was built on"):
        write_manifest(layout, stale, hmac_key)


def test_unfinished_or_inconsistent_shards_are_refused(tmp_path: Path) -> None:
    layout = make_output(tmp_path / "out")
    with pytest.raises(ManifestError, match=r"data-00005\.tar: not finalized"):
        build_manifest(layout, [*shard_names(), "data-00005.tar"], dict(RUN))
    tar = Path(layout.tar("data-00000.tar"))
    tar.write_bytes(tar.read_bytes() + b"\0" * 512)
    with pytest.raises(ManifestError, match="disagree with the completion marker on tar_sha256"):
        build_manifest(layout, shard_names(), dict(RUN))


@pytest.mark.parametrize("name", ["aws_secret_access_key", "api_key", "password", "hf_token"])
def test_secret_looking_run_fields_are_refused(tmp_path: Path, name: str) -> None:
    layout = make_output(tmp_path / "out")
    with pytest.raises(ManifestError, match="looks like a secret"):
        build_manifest(layout, shard_names(), {**RUN, "storage": {name: "hunter2"}})
