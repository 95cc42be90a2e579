"""Security review of the evidence: attacks by someone who can write to OUTPUT (and maybe add files to the
anchor folder) but does not hold the signing key.

Each test is an attack and states what must happen: planted fragments and laundered unsigned shards
(authenticated by the run's derived key), forged checkpoint names and another output's checkpoints,
non-canonical JSON, hostile history entries and counts, and a race between two lease takeovers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from raypipe.audit.anchor import latest_checkpoint, write_checkpoint
from raypipe.audit.manifest import (
    entry_from_marker,
    manifest_path,
    read_manifest,
    signed_payload,
)
from raypipe.audit.signing import Key, sign
from raypipe.audit.verify import _Verifier, verify_output
from raypipe.io.publish import create_exclusive
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout

from .conftest import make_output, shard_contents, shard_names, sidecars, sign_shards, write_shard
from .test_attacks import launder

OPTIONS = StorageOptions()


def _chain(layout: OutputLayout) -> str:
    return str((read_manifest(layout) or {})["chain_id"])


def _two_runs(root: Path, anchor: Path, key: Key) -> OutputLayout:
    """OUTPUT after two runs (manifest 1: shard 0; manifest 2: adds shard 1), a checkpoint each."""
    layout = make_output(root, shards=1)
    write_checkpoint(str(anchor), sign_shards(layout, shard_names(1), key), key, OPTIONS, layout.root)
    records, samples = shard_contents(1)
    write_shard(root, "data-00001.tar", records, samples)
    write_checkpoint(str(anchor), sign_shards(layout, shard_names(2), key), key, OPTIONS, layout.root)
    return layout


def _roll_back_to_first(root: Path) -> None:
    shutil.copy(root / ".raypipe/manifests/000001.json", root / ".raypipe/manifest.json")
    shutil.rmtree(root / ".raypipe/manifests")
    for path in sidecars("data-00001.tar"):
        (root / path).unlink()


def _forge(layout: OutputLayout, change: Any) -> None:
    """Rewrite manifest.json without the key (the signature no longer matches)."""
    manifest = read_manifest(layout) or {}
    change(manifest)
    Path(manifest_path(layout)).write_text(json.dumps(manifest))


# ------------------------------------------------------------------ (a) a face released, verify says OK


def test_a_planted_fragment_is_never_signed(tmp_path: Path, hmac_key: Key) -> None:
    from raypipe.config import LimitsConfig, build_config
    from raypipe.pipeline.commit import RunInfo, commit_fragment
    from raypipe.pipeline.plan import make_plan
    from raypipe.pipeline.read import shard_tasks
    from raypipe.pipeline.run import FRAGMENT_KEY_PURPOSE
    from raypipe.pipeline.task import SampleTask
    from raypipe.records import Status
    from tests.integration.jobs import TEST_MODELS, sample_shards

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "part-00000.tar").write_bytes(sample_shards(shards=1, per_shard=3)["part-00000.tar"])
    out = tmp_path / "out"
    config = build_config({"input": str(inputs / "*.tar"), "output": str(out), "models": TEST_MODELS}, {})
    secret = hmac_key.derive(FRAGMENT_KEY_PURPOSE)  # what the run derives from its signing key
    layout = OutputLayout(str(out))
    honest = RunInfo(config_hash="c" * 64, code_version="test", method={}, fragment_key=secret)
    (work,) = make_plan(config, layout, secret=secret).pending
    tasks = list(shard_tasks(work, OPTIONS, LimitsConfig()))
    # An interrupted run committed samples 1.. and the end of the shard, but not sample 0 (the portrait).
    for task in tasks[1:]:
        task.status, task.out_members = Status.NO_FACE, task.members
    commit_fragment(layout, work.name, tasks[1:], honest)
    # The attacker (no key) plants sample 0: released as it was read, recorded as no_face.
    face = tasks[0]
    planted = SampleTask(face.shard, face.shard_name, 0, face.key, face.members, face.input_sha256)
    planted.status, planted.out_members, planted.input_id = Status.NO_FACE, list(face.members), face.input_id
    commit_fragment(layout, work.name, [planted], RunInfo(config_hash="c" * 64, code_version="t", method={}))
    forged = RunInfo(config_hash="c" * 64, code_version="t", method={}, fragment_key=b"guessed key")
    commit_fragment(layout, work.name, [planted], forged)
    # The resume does not take the planted sample for committed work: it is read and checked again.
    (work,) = make_plan(config, layout, secret=secret).pending
    assert set(work.committed) == {1, 2}


def test_a_laundered_unsigned_shard_is_not_signed_by_the_next_run(tmp_path: Path, hmac_key: Key) -> None:
    from raypipe.pipeline.plan import _finalized_unsigned
    from raypipe.pipeline.run import FRAGMENT_KEY_PURPOSE

    layout = make_output(tmp_path / "out", shards=1)  # finalized, the run died before its manifest
    launder(layout)  # the quarantined face is back in the tar, its record says no_face, marker recomputed
    # The marker carries no HMAC under the run's key (the attacker cannot make one): the shard is redone.
    assert _finalized_unsigned(layout, "data-00000.tar", hmac_key.derive(FRAGMENT_KEY_PURPOSE)) is None
    assert not Path(layout.tar("data-00000.tar")).exists()


# ------------------------------------------------------------------ (b) rollback / substitution


def test_a_checkpoint_with_a_forged_sequence_in_its_name_does_not_hide_the_newest(
    tmp_path: Path, hmac_key: Key
) -> None:
    anchor = tmp_path / "anchor"
    layout = _two_runs(tmp_path / "out", anchor, hmac_key)
    chain = _chain(layout)
    _roll_back_to_first(Path(layout.root))
    shutil.copy(anchor / f"{chain}-000001.json", anchor / f"{chain}-999999.json")
    report = verify_output(layout.root, hmac_key, anchor=str(anchor))
    assert "rollback" in report.kinds, report.render()


def test_another_output_of_the_same_key_and_anchor_does_not_pass_for_this_one(tmp_path: Path, hmac_key: Key) -> None:
    anchor = tmp_path / "anchor"
    full = make_output(tmp_path / "full", shards=2)
    write_checkpoint(str(anchor), sign_shards(full, shard_names(2), hmac_key), hmac_key, OPTIONS, full.root)
    trial = make_output(tmp_path / "trial", shards=1)
    write_checkpoint(str(anchor), sign_shards(trial, shard_names(1), hmac_key), hmac_key, OPTIONS, trial.root)
    assert verify_output(full.root, hmac_key, anchor=str(anchor)).ok
    shutil.rmtree(full.root)
    shutil.copytree(trial.root, full.root)  # truncated to one shard, a different history
    assert not verify_output(full.root, hmac_key, anchor=str(anchor)).ok


def test_a_manifest_with_a_duplicate_key_is_not_ok(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    path = Path(manifest_path(layout))
    path.write_text('{"shards": {},' + path.read_text().lstrip()[1:])
    assert not verify_output(layout.root, hmac_key).ok


def test_handled_rollback_with_a_checkpoint_file_of_another_chain(tmp_path: Path, hmac_key: Key) -> None:
    anchor = tmp_path / "anchor"
    one = make_output(tmp_path / "one", shards=1)
    write_checkpoint(str(anchor), sign_shards(one, shard_names(1), hmac_key), hmac_key, OPTIONS, one.root)
    two = make_output(tmp_path / "two", shards=1)
    sign_shards(two, shard_names(1), hmac_key)
    other = latest_checkpoint(str(anchor), _chain(one), OPTIONS, hmac_key)
    report = verify_output(two.root, hmac_key, anchor=str(other))
    assert "belongs to the output at" in next(p for p in report.problems if p.kind == "rollback").detail
    # The same checkpoint copied under this chain's name: still named, never OK.
    shutil.copy(str(other), anchor / f"{_chain(two)}-000005.json")
    assert "rollback" in verify_output(two.root, hmac_key, anchor=str(anchor)).kinds


def test_handled_a_garbage_checkpoint_with_a_high_name_is_not_ok(tmp_path: Path, hmac_key: Key) -> None:
    anchor = tmp_path / "anchor"
    layout = _two_runs(tmp_path / "out", anchor, hmac_key)
    (anchor / f"{_chain(layout)}-999999.json").write_text('{"format": "raypipe.checkpoint/1"}')
    assert not verify_output(layout.root, hmac_key, anchor=str(anchor)).ok


def test_handled_an_unsigned_overwrite_record_cannot_launder(tmp_path: Path, hmac_key: Key) -> None:
    anchor = tmp_path / "anchor"
    layout = _two_runs(tmp_path / "out", anchor, hmac_key)
    launder(layout)

    def claim_overwrite(manifest: dict[str, Any]) -> None:
        marker = json.loads(Path(layout.done("data-00000.tar")).read_text())
        manifest["shards"]["data-00000.tar"] = entry_from_marker(marker)
        manifest["overwrite"] = {"removed": ["data-00000.tar"], "reason": "--overwrite"}

    _forge(layout, claim_overwrite)
    assert "bad_signature" in verify_output(layout.root, hmac_key).kinds


# ------------------------------------------------------------------ history files with odd names


@pytest.mark.parametrize(("name", "kind"), [("-00001.json", "extra"), ("0000001.json", "broken_chain")])
def test_handled_history_files_with_odd_names(tmp_path: Path, hmac_key: Key, name: str, kind: str) -> None:
    layout = _two_runs(tmp_path / "out", tmp_path / "anchor", hmac_key)
    history = Path(layout.state("manifests"))
    first = json.loads((history / "000001.json").read_text())
    body = {k: v for k, v in first.items() if k != "signature"} | {"sequence": int(name[:-5])}
    (history / name).write_text(json.dumps(body | {"signature": sign(signed_payload(body), hmac_key)}))
    assert kind in verify_output(layout.root, hmac_key).kinds


# ------------------------------------------------------------------ (c) crash, hang, read outside OUTPUT


def test_a_folder_named_like_a_history_file_does_not_crash_verify(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    Path(layout.state("manifests/000001.json")).mkdir(parents=True)
    assert not verify_output(layout.root, hmac_key).ok


def test_a_history_link_is_not_followed(signed_output: Any, hmac_key: Key, tmp_path: Path) -> None:
    layout = signed_output(hmac_key)
    outside = tmp_path / "outside.json"
    outside.write_text('{"sequence": 9}')
    history = Path(layout.state("manifests"))
    history.mkdir(parents=True, exist_ok=True)
    (history / "000009.json").symlink_to(outside)
    report = verify_output(layout.root, hmac_key)
    assert any("not a regular file" in p.detail for p in report.problems), report.render()


def test_an_infinite_history_sequence_does_not_crash_verify(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    history = Path(layout.state("manifests"))
    history.mkdir(parents=True, exist_ok=True)
    (history / "000001.json").write_text('{"sequence": 1e400}')
    assert not verify_output(layout.root, hmac_key).ok


def test_non_integer_counts_do_not_crash_verify(signed_output: Any, hmac_key: Key) -> None:
    layout = signed_output(hmac_key)
    _forge(layout, lambda m: m["shards"]["data-00001.tar"]["counts"].update({"no_face": "x"}))
    assert "bad_signature" in verify_output(layout.root, hmac_key).kinds


def test_an_unhashable_overwrite_record_does_not_crash_verify(tmp_path: Path, hmac_key: Key) -> None:
    layout = _two_runs(tmp_path / "out", tmp_path / "anchor", hmac_key)
    _forge(layout, lambda m: m.update(overwrite={"removed": [["data-00000.tar"]], "reason": "x"}))
    assert "bad_signature" in verify_output(layout.root, hmac_key).kinds


def test_verify_work_is_not_driven_by_an_unsigned_sample_count(
    signed_output: Any, hmac_key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = signed_output(hmac_key)
    _forge(layout, lambda m: m["shards"]["data-00000.tar"].update(samples=10**6))
    calls = {"n": 0}
    add = _Verifier.add

    def counting(self: _Verifier, kind: str, where: str, detail: str) -> None:
        calls["n"] += 1
        add(self, kind, where, detail)

    monkeypatch.setattr(_Verifier, "add", counting)
    assert not verify_output(layout.root, hmac_key).ok
    assert calls["n"] < 10_000


def test_handled_a_link_to_a_folder_outside_output_is_extra_and_not_walked(
    signed_output: Any, hmac_key: Key, tmp_path: Path
) -> None:
    layout = signed_output(hmac_key)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.tar").write_bytes(b"x")
    Path(layout.root, "link").symlink_to(outside)
    Path(layout.root, "loop").symlink_to(layout.root)
    report = verify_output(layout.root, hmac_key)
    assert sorted((p.kind, p.where) for p in report.problems) == [("extra", "link"), ("extra", "loop")]


@pytest.mark.parametrize("marker", ["[1]", "[" * 100_000 + "]" * 100_000])
def test_a_hostile_unsigned_marker_does_not_crash_planning(tmp_path: Path, marker: str) -> None:
    from raypipe.pipeline.plan import _finalized_unsigned

    layout = make_output(tmp_path / "out", shards=1)
    Path(layout.done("data-00000.tar")).write_text(marker)
    assert _finalized_unsigned(layout, "data-00000.tar") is None


# ------------------------------------------------------------------ the lease


def test_two_drivers_taking_over_one_stale_lease_do_not_both_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raypipe.pipeline import lease as lease_mod

    layout = OutputLayout(str(tmp_path / "out"))
    path = layout.state(lease_mod.LEASE_FILE)
    stale = {"host": "elsewhere", "pid": 1, "run_id": "old", "expires": 1.0}
    create_exclusive(layout.fs, path, json.dumps(stale).encode())
    a = lease_mod.Holder("host-a", 11, "run-a")
    b = lease_mod.Holder("host-b", 22, "run-b")
    real_read = lease_mod._read
    state = {"raced": False}

    def racing_read(target: OutputLayout) -> Any:
        found = real_read(target)
        if not state["raced"] and found is not None and found[0].get("run_id") == "old":
            # B has read the stale lease; A takes it over before B acts on what it read.
            state["raced"] = True
            lease_mod._take_over(target, found[1])
            assert create_exclusive(target.fs, path, lease_mod._lease_bytes(a, 600))
        return found

    monkeypatch.setattr(lease_mod, "_read", racing_read)
    with pytest.raises(lease_mod.LeaseHeldError, match="run-a"):
        lease_mod.acquire(layout, b, 600)  # A holds OUTPUT: B's takeover of the old lease must not undo it
    assert json.loads(Path(path).read_text())["run_id"] == "run-a"
