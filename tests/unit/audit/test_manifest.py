"""The run manifest: what it commits to, how resumed runs chain, and what it refuses to sign."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from raypipe.audit.manifest import (
    ENTRY_FIELDS,
    ManifestError,
    audit_rows,
    build_manifest,
    entry_from_files,
    manifest_digest,
    read_manifest,
    record_leaf,
    write_manifest,
)
from raypipe.audit.merkle import inclusion_proof, leaf_hash, verify_inclusion
from raypipe.audit.signing import Key, canonical
from raypipe.audit.verify import verify_output
from raypipe.layout import OutputLayout

from .conftest import RUN, SignedOutput, make_output, shard_contents, shard_names, sign_shards, write_shard


def test_manifest_commits_to_files_counts_and_every_record(signed_output: SignedOutput, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    manifest = json.loads(Path(layout.state("manifest.json")).read_text())
    assert manifest["sequence"] == 1 and manifest["previous"] is None
    assert manifest["counts"] == {"anonymized": 2, "no_face": 2, "quarantined": 2}
    assert manifest["samples"] == 6 and manifest["released"] == 4
    assert manifest["added"] == shard_names() and manifest["overwrite"] is None
    for shard in shard_names():
        marker = json.loads(Path(layout.done(shard)).read_text())
        assert manifest["shards"][shard] == {k: marker[k] for k in ENTRY_FIELDS}
    assert manifest["run"] == RUN
    # One record is proven against the signed root in two steps, without handing out the others:
    # record -> its shard's records_root -> the shard entry -> the manifest's root.
    shard = shard_names()[1]
    rows = audit_rows(Path(layout.audit(shard)).read_bytes())
    hashes = [leaf_hash(record_leaf(row)) for row in rows]
    shard_root = bytes.fromhex(manifest["shards"][shard]["records_root"])
    assert verify_inclusion(hashes[2], 2, len(hashes), inclusion_proof(hashes, 2), shard_root)
    changed = {**rows[2], "status": "anonymized"}
    assert not verify_inclusion(leaf_hash(record_leaf(changed)), 2, len(hashes), inclusion_proof(hashes, 2), shard_root)
    names = sorted(manifest["shards"])
    entries = [leaf_hash(canonical({"name": n, "entry": manifest["shards"][n]})) for n in names]
    root = bytes.fromhex(manifest["records"]["merkle_root"])
    assert verify_inclusion(entries[1], 1, len(entries), inclusion_proof(entries, 1), root)


def test_a_resumed_run_chains_to_the_previous_manifest(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out", shards=1)
    first = sign_shards(layout, shard_names(1), hmac_key)
    # The resumed run finalizes one more shard; the earlier entry is carried over, not recomputed.
    records, samples = shard_contents(1)
    write_shard(Path(layout.root), "data-00001.tar", records, samples)
    second = sign_shards(layout, shard_names(2), hmac_key)
    assert second["sequence"] == 2 and second["previous"] == manifest_digest(first)
    assert second["chain_id"] == first["chain_id"]
    assert second["added"] == ["data-00001.tar"]
    assert second["shards"]["data-00000.tar"] == first["shards"]["data-00000.tar"]
    history = Path(layout.state("manifests/000001.json"))
    assert json.loads(history.read_text()) == first
    report = verify_output(layout.root, hmac_key)
    assert report.ok, report.render()
    assert report.sequence == 2 and report.samples == 6


def test_building_a_manifest_reads_no_shard_file(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    previous = sign_shards(layout, shard_names(), hmac_key)
    for shard in shard_names():  # whatever is on disk now, the carried entries come from the signed history
        Path(layout.tar(shard)).unlink()
        Path(layout.audit(shard)).unlink()
    added = {"data-00009.tar": {**previous["shards"]["data-00000.tar"], "samples": 3}}
    manifest = build_manifest(previous, added, dict(RUN))
    assert manifest["shards"]["data-00000.tar"] == previous["shards"]["data-00000.tar"]
    assert sorted(manifest["shards"]) == [*shard_names(), "data-00009.tar"]


def test_a_signed_entry_changes_only_with_a_recorded_overwrite(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    previous = sign_shards(layout, shard_names(), hmac_key)
    other = {**previous["shards"]["data-00000.tar"], "tar_sha256": "ff" * 32}
    with pytest.raises(ManifestError, match="already signed with other content"):
        build_manifest(previous, {"data-00000.tar": other}, dict(RUN))
    replaced = build_manifest(previous, {"data-00000.tar": other}, dict(RUN), overwrite="--overwrite")
    assert replaced["overwrite"] == {"removed": shard_names(), "reason": "--overwrite"}
    assert sorted(replaced["shards"]) == ["data-00000.tar"]


@pytest.fixture
def chained(tmp_path: Path, hmac_key: Key) -> Path:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(1), hmac_key)
    sign_shards(layout, shard_names(2), hmac_key)
    _resign(layout, hmac_key)  # a third manifest that adds nothing (possible, though a run never writes one)
    return Path(layout.root)


def test_a_broken_link_is_named(chained: Path, hmac_key: Key) -> None:
    path = chained / ".raypipe/manifests/000001.json"
    earlier = json.loads(path.read_text())
    earlier["created"] = "2000-01-01T00:00:00Z"  # rewrite history
    path.write_text(json.dumps(earlier))
    report = verify_output(str(chained), hmac_key)
    wheres = {(p.kind, p.where) for p in report.problems}
    assert ("broken_chain", ".raypipe/manifests/000002.json") in wheres
    assert ("bad_signature", ".raypipe/manifests/000001.json") in wheres
    assert report.kinds == {"broken_chain", "bad_signature"}


def test_a_removed_history_manifest_is_named(chained: Path, hmac_key: Key) -> None:
    (chained / ".raypipe/manifests/000002.json").unlink()
    report = verify_output(str(chained), hmac_key)
    assert [(p.kind, p.where) for p in report.problems] == [("missing", ".raypipe/manifests/000002.json")]


def test_a_copy_left_by_an_interrupted_write_is_accepted(chained: Path, hmac_key: Key) -> None:
    shutil.copy(chained / ".raypipe/manifest.json", chained / ".raypipe/manifests/000003.json")
    assert verify_output(str(chained), hmac_key).ok


def _resign(layout: OutputLayout, key: Key) -> None:
    previous = read_manifest(layout)
    write_manifest(layout, build_manifest(previous, {}, dict(RUN)), key)


def test_a_manifest_is_only_written_on_top_of_the_one_it_was_built_on(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    stale = build_manifest(None, {s: entry_from_files(layout, s) for s in shard_names()}, dict(RUN))
    sign_shards(layout, shard_names(), hmac_key)  # another writer
    with pytest.raises(ManifestError, match="not the one this manifest was built on"):
        write_manifest(layout, stale, hmac_key)


def test_unfinished_or_inconsistent_shards_are_refused(tmp_path: Path) -> None:
    layout = make_output(tmp_path / "out")
    with pytest.raises(ManifestError, match=r"data-00005\.tar: not finalized"):
        entry_from_files(layout, "data-00005.tar")
    tar = Path(layout.tar("data-00000.tar"))
    tar.write_bytes(tar.read_bytes() + b"\0" * 512)
    with pytest.raises(ManifestError, match="disagree with the completion marker on tar_sha256"):
        entry_from_files(layout, "data-00000.tar")


@pytest.mark.parametrize("name", ["aws_secret_access_key", "api_key", "password", "hf_token"])
def test_secret_looking_run_fields_are_refused(name: str) -> None:
    with pytest.raises(ManifestError, match="looks like a secret"):
        build_manifest(None, {}, {**RUN, "storage": {name: "hunter2"}})
