"""Attacks on the evidence by someone who can write to OUTPUT: laundering a shard, rolling OUTPUT back,
planting objects, forging a manifest that points verify elsewhere. Each one must be named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from raypipe.audit.anchor import latest_checkpoint, write_checkpoint
from raypipe.audit.manifest import (
    ManifestError,
    audit_rows,
    build_manifest,
    manifest_digest,
    manifest_path,
    read_manifest,
    read_signed_manifest,
    records_root,
    signed_payload,
    status_counts,
    write_manifest,
)
from raypipe.audit.signing import Key, parse_key, sign
from raypipe.audit.verify import verify_output
from raypipe.io.storage import StorageOptions
from raypipe.io.tars import Sample, read_tar, tar_bytes
from raypipe.layout import OutputLayout

from .conftest import (
    RUN,
    audit_bytes,
    make_output,
    sample_key,
    shard_contents,
    shard_names,
    sidecars,
    sign_shards,
    write_shard,
)
from .test_verify import find

OPTIONS = StorageOptions()


def launder(layout: OutputLayout, shard: str = "data-00000.tar") -> None:
    """Put an original face back into a finished shard, consistently: tar, audit and marker agree."""
    root, stem = Path(layout.root), shard[: -len(".tar")]
    samples = [s for s in read_tar((root / shard).read_bytes()) if isinstance(s, Sample)]
    rows = audit_rows((root / f".raypipe/shards/{stem}.audit.parquet").read_bytes())
    rows = [{k: v for k, v in row.items() if k != "schema_version"} for row in rows]
    key = sample_key(0, 2)  # the quarantined sample: released now, as no_face
    original = Sample(key, [(f"{key}.jpg", f"jpeg bytes of {key}".encode()), (f"{key}.json", b'{"label": 1}')])
    samples.append(original)
    rows[2] |= {"status": "no_face", "faces": [], "faces_count": 0, "error": None, "error_step": None}
    from raypipe.audit.schema import sample_digest

    rows[2]["output_sha256"] = sample_digest(original.members)
    rows[2]["output_shard"] = shard
    tar, audit = tar_bytes(samples), audit_bytes(rows)
    (root / shard).write_bytes(tar)
    (root / f".raypipe/shards/{stem}.audit.parquet").write_bytes(audit)
    marker = json.loads((root / f".raypipe/shards/{stem}.done.json").read_text())
    written = audit_rows(audit)
    marker |= {
        "tar_sha256": hashlib.sha256(tar).hexdigest(),
        "audit_sha256": hashlib.sha256(audit).hexdigest(),
        "records_root": records_root(written),
        "counts": status_counts(written),
        "released": len(samples),
    }
    (root / f".raypipe/shards/{stem}.done.json").write_text(json.dumps(marker))


@pytest.fixture
def two_runs(tmp_path: Path, hmac_key: Key) -> OutputLayout:
    """OUTPUT after two runs (manifest 1: shard 0; manifest 2: adds shard 1), with a checkpoint each."""
    layout = make_output(tmp_path / "out", shards=1)
    anchor = tmp_path / "anchor"
    write_checkpoint(str(anchor), sign_shards(layout, shard_names(1), hmac_key), hmac_key, OPTIONS, layout.root)
    records, samples = shard_contents(1)
    write_shard(Path(layout.root), "data-00001.tar", records, samples)
    write_checkpoint(str(anchor), sign_shards(layout, shard_names(2), hmac_key), hmac_key, OPTIONS, layout.root)
    return layout


def test_a_laundered_shard_stays_caught_after_a_new_manifest(two_runs: OutputLayout, hmac_key: Key) -> None:
    launder(two_runs)
    assert find(verify_output(two_runs.root, hmac_key), "modified", "data-00000.tar")
    # The operator's routine rerun: a new manifest starts from the signed history, not from the disk,
    # so the laundered files are never signed.
    previous = read_signed_manifest(two_runs, hmac_key)
    write_manifest(two_runs, build_manifest(previous, {}, dict(RUN)), hmac_key)
    report = verify_output(two_runs.root, hmac_key)
    assert report.sequence == 3
    assert find(report, "modified", "data-00000.tar")
    assert find(report, "modified", ".raypipe/shards/data-00000.audit.parquet")


def test_a_rewritten_history_entry_is_named(two_runs: OutputLayout, hmac_key: Key) -> None:
    # A manifest that really is signed by the key (an insider re-signing), but changes a signed entry.
    launder(two_runs)
    previous = read_signed_manifest(two_runs, hmac_key)
    assert previous is not None
    marker = json.loads(Path(two_runs.done("data-00000.tar")).read_text())
    laundered = {k: marker[k] for k in previous["shards"]["data-00000.tar"]}
    forged = build_manifest({**previous, "shards": previous["shards"] | {"data-00000.tar": laundered}}, {}, dict(RUN))
    forged["previous"] = manifest_digest(previous)  # totals and root are consistent: only the history lies
    write_manifest(two_runs, forged, hmac_key)
    report = verify_output(two_runs.root, hmac_key)
    problem = find(report, "rewritten", ".raypipe/manifest.json data-00000.tar")
    assert "without a recorded reason" in problem.detail
    assert report.kinds == {"rewritten"}, report.render()


def test_a_rollback_is_invisible_without_an_anchor_and_named_with_one(
    two_runs: OutputLayout, hmac_key: Key, tmp_path: Path
) -> None:
    root = Path(two_runs.root)
    shutil.copy(root / ".raypipe/manifests/000001.json", root / ".raypipe/manifest.json")
    shutil.rmtree(root / ".raypipe/manifests")
    for path in sidecars("data-00001.tar"):
        (root / path).unlink()
    # What verify cannot prove alone: this is a complete, correctly signed output of run 1.
    assert verify_output(two_runs.root, hmac_key).ok
    newest = latest_checkpoint(str(tmp_path / "anchor"), _chain(two_runs), OPTIONS, hmac_key)
    for anchor in (tmp_path / "anchor", newest):
        report = verify_output(two_runs.root, hmac_key, anchor=str(anchor))
        problem = find(report, "rollback", ".raypipe/manifest.json")
        assert "OUTPUT is at manifest 1, but the anchor holds checkpoint 2" in problem.detail


def test_the_anchor_passes_an_untouched_output_and_names_a_replaced_history(
    two_runs: OutputLayout, hmac_key: Key, tmp_path: Path
) -> None:
    report = verify_output(two_runs.root, hmac_key, anchor=str(tmp_path / "anchor"))
    assert report.ok, report.render()
    assert report.anchor == 2
    # Same sequence, other content: the whole OUTPUT rebuilt and signed again.
    manifest = read_manifest(two_runs)
    assert manifest is not None
    body = {k: v for k, v in manifest.items() if k != "signature"} | {"created": "2030-01-01T00:00:00Z"}
    Path(manifest_path(two_runs)).write_text(json.dumps(body | {"signature": sign(signed_payload(body), hmac_key)}))
    report = verify_output(two_runs.root, hmac_key, anchor=str(tmp_path / "anchor"))
    assert "history was replaced" in find(report, "rollback", ".raypipe/manifest.json").detail
    with pytest.raises(ManifestError, match="already holds another checkpoint 2"):
        write_checkpoint(str(tmp_path / "anchor"), read_manifest(two_runs) or {}, hmac_key, OPTIONS, two_runs.root)


def test_a_forged_checkpoint_is_refused(two_runs: OutputLayout, hmac_key: Key, tmp_path: Path) -> None:
    path = Path(latest_checkpoint(str(tmp_path / "anchor"), _chain(two_runs), OPTIONS, hmac_key) or "")
    checkpoint = json.loads(path.read_text())
    checkpoint["sequence"] = 1
    path.write_text(json.dumps(checkpoint))
    assert find(verify_output(two_runs.root, hmac_key, anchor=str(path)), "bad_signature", str(path))


def test_a_changed_or_missing_input_is_named_with_the_anchor(tmp_path: Path, hmac_key: Key) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    layout = make_output(tmp_path / "out")
    for shard in shard_names():  # pin real local inputs (the fixture pins made-up S3 objects)
        (inputs / shard).write_bytes(b"input bytes of " + shard.encode())
        _pin(layout, shard, inputs / shard)
    write_checkpoint(
        str(tmp_path / "anchor"), sign_shards(layout, shard_names(), hmac_key), hmac_key, OPTIONS, layout.root
    )
    assert verify_output(layout.root, hmac_key, anchor=str(tmp_path / "anchor")).ok
    (inputs / "data-00000.tar").write_bytes(b"another input")
    (inputs / "data-00001.tar").unlink()
    report = verify_output(layout.root, hmac_key, anchor=str(tmp_path / "anchor"))
    assert find(report, "modified", str(inputs / "data-00000.tar"))
    assert find(report, "missing", str(inputs / "data-00001.tar"))


@pytest.mark.parametrize(
    "planted",
    ["extra/x.tar", ".x.tar", "data-00000.tar.orig", ".raypipe/manifests/notes.txt", ".raypipe/runs/evil.json"],
)
def test_objects_planted_under_output_are_extra(signed_output: Any, hmac_key: Key, planted: str) -> None:
    layout = signed_output(hmac_key)
    path = Path(layout.root, planted)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"planted")
    report = verify_output(layout.root, hmac_key)
    assert [(p.kind, p.where) for p in report.problems] == [("extra", planted)]


def test_verify_reads_only_known_names(signed_output: Any, hmac_key: Key, tmp_path: Path) -> None:
    layout = signed_output(hmac_key)
    manifest = read_manifest(layout) or {}
    entry = manifest["shards"]["data-00000.tar"]
    body = {k: v for k, v in manifest.items() if k != "signature"}
    planted = ["../../etc/passwd", "/dev/zero.tar", "..%2F..%2Fetc.files", "%2e.files", "a%00b.files", "%FF.files"]
    body["shards"] = {**{name: entry for name in planted}, **body["shards"]}
    Path(manifest_path(layout)).write_text(json.dumps(body | {"signature": sign(signed_payload(body), hmac_key)}))
    started = time.monotonic()
    report = verify_output(layout.root, hmac_key)
    assert time.monotonic() - started < 10
    details = " ".join(p.detail for p in report.problems)
    assert "'../../etc/passwd' is not a plain .tar, .parquet or .files name" in details
    assert "'/dev/zero.tar' is not a plain .tar, .parquet or .files name" in details
    for name in planted[2:]:  # groups of files whose names no listing gives: refused, never unquoted to a path
        assert f"{name!r} is not a plain .tar, .parquet or .files name" in details


def test_verify_never_reads_a_link_or_device(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    audit = Path(layout.audit("data-00000.tar"))
    audit.unlink()
    os.symlink("/dev/zero", audit)
    started = time.monotonic()
    report = verify_output(layout.root, hmac_key)
    assert time.monotonic() - started < 10
    assert "not a regular file" in find(report, "modified", ".raypipe/shards/data-00000.audit.parquet").detail


def test_deeply_nested_json_is_refused_without_crashing(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    Path(manifest_path(layout)).write_text("[" * 100_000 + "]" * 100_000)
    report = verify_output(layout.root, hmac_key)
    assert "nested" in find(report, "modified", ".raypipe/manifest.json").detail
    Path(layout.done("data-00000.tar")).write_text('{"a":' * 50 + "1" + "}" * 50)
    Path(manifest_path(layout)).unlink()
    assert find(verify_output(layout.root, hmac_key), "missing", ".raypipe/manifest.json")


def test_a_run_never_extends_a_manifest_it_cannot_verify(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    other = parse_key(b"another key: 7f3a9c1e5b2d8046af13", "other")
    with pytest.raises(ManifestError, match="does not verify with the audit key"):
        read_signed_manifest(layout, other)
    manifest = read_manifest(layout) or {}
    manifest["shards"].pop("data-00001.tar")
    Path(manifest_path(layout)).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="does not verify"):
        read_signed_manifest(layout, hmac_key)


def _chain(layout: OutputLayout) -> str:
    return str((read_manifest(layout) or {})["chain_id"])


def _pin(layout: OutputLayout, shard: str, source: Path) -> None:
    from raypipe.io.identity import object_identity

    marker_path = Path(layout.done(shard))
    marker = json.loads(marker_path.read_text())
    identity = object_identity(str(source), OPTIONS)
    marker["input"] = identity | {"sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    marker_path.write_text(json.dumps(marker))
