"""The job's stages end to end without Ray: real decode, dlib detection, tiny diffusion, the
re-identification gate, fragments, finalize, signed manifest, verify and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe.audit.report import render_report
from raypipe.audit.verify import verify_output
from raypipe.config import AuditConfig, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.io.storage import StorageOptions
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Anonymize, Compose, Decode
from tests.integration.jobs import read_audit, read_tar, sample_shards
from tests.unit.pipeline.stages_run import KEY, run_stages

MODELS = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
METHOD = MethodConfig(num_steps=6, face_size=128)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    path = folder / "part-00000.tar"
    path.write_bytes(sample_shards(shards=1, per_shard=3)["part-00000.tar"])
    return path


@pytest.fixture(scope="module")
def anonymize() -> Anonymize:
    return Anonymize(MODELS, METHOD, LimitsConfig(), detect=True).ready()


def test_a_real_run_of_the_stages_verifies(shard: Path, anonymize: Anonymize, tmp_path: Path) -> None:
    run_stages(shard, tmp_path, anonymize)
    records = read_audit((tmp_path / ".raypipe/shards/part-00000.audit.parquet").read_bytes())
    assert [r["status"] for r in records] == ["anonymized", "no_face", "no_face"]
    face = records[0]["faces"][0]
    assert face["distance"] is not None and face["distance"] >= face["threshold"] == pytest.approx(0.6)
    assert verify_output(str(tmp_path), KEY).ok


def test_an_anonymizer_that_returns_the_original_face_is_quarantined(
    shard: Path, anonymize: Anonymize, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Test double: the "anonymized" crop is the original crop. The gate must catch it.
    monkeypatch.setattr(anonymize.rp, "anonymize_crops", lambda crops, *args, **kwargs: [c.copy() for c in crops])
    held_at = tmp_path.with_name(tmp_path.name + "-held")  # outside OUTPUT, as the config requires
    run_stages(shard, tmp_path, anonymize, quarantine=held_at)
    records = read_audit((tmp_path / ".raypipe/shards/part-00000.audit.parquet").read_bytes())
    assert records[0]["status"] == "quarantined" and records[0]["error_step"] == "verify"
    assert records[0]["faces"][0]["status"] == "reidentified"
    assert records[0]["faces"][0]["distance"] < 0.6 and records[0]["faces"][0]["attempts"] == 3
    marker = json.loads((tmp_path / ".raypipe/shards/part-00000.done.json").read_text())
    assert marker["face_counts"] == {"reidentified": 1} and marker["faces_retried"] == 1  # for the run summary
    released = read_tar((tmp_path / "part-00000.tar").read_bytes())
    assert [s.key for s in released] == [r["key"] for r in records[1:]]  # never released
    assert verify_output(str(tmp_path), KEY).ok
    html = render_report(str(tmp_path), tmp_path / "report.html").read_text()
    assert records[0]["key"] in html and "still re-identifies" in html
    # Asked for, the original is kept apart with the reason; the released shard never has it.
    (held,) = read_tar((held_at / "part-00000.tar").read_bytes())
    original = read_tar(shard.read_bytes())[0]
    assert held.key == original.key and held.members[:-1] == original.members
    assert held.members[-1][0].endswith("raypipe-quarantine.json") and b"still re-identifies" in held.members[-1][1]


def test_a_face_the_detector_missed_is_caught_in_the_output(
    shard: Path, anonymize: Anonymize, tmp_path: Path, monkeypatch
) -> None:
    # Test double: a detector that finds nothing; the independent re-detection finds the astronaut.
    monkeypatch.setattr(anonymize.rp.analyzer, "analyze", lambda image: [])
    run_stages(shard, tmp_path, anonymize)
    records = read_audit((tmp_path / ".raypipe/shards/part-00000.audit.parquet").read_bytes())
    assert records[0]["status"] == "quarantined" and records[0]["missed_faces"] == 1
    assert "not anonymized" in records[0]["error"]
    assert [s.key for s in read_tar((tmp_path / "part-00000.tar").read_bytes())] == [r["key"] for r in records[1:]]


def test_an_image_that_does_not_decode_fails_its_sample_naming_the_member(tmp_path: Path) -> None:
    from raypipe.io.tars import Sample, tar_bytes

    broken = tmp_path / "broken.tar"
    broken.write_bytes(tar_bytes([Sample("a", [("a.jpg", b"this is not a jpeg"), ("a.txt", b"x")])]))
    decoded = Decode(LimitsConfig())(
        list(shard_tasks(ShardWork(str(broken), broken.name), StorageOptions(), LimitsConfig()))
    )
    assert decoded[0].status.value == "failed" and decoded[0].error_step == "decode"
    assert "a.jpg" in decoded[0].error


def test_unchanged_images_are_searched_again_only_by_another_detector(shard: Path, monkeypatch) -> None:
    calls: list[int] = []
    for analyzer, expected in (("dlib", 0), ("insightface", 2)):
        compose = Compose(AuditConfig(), analyzer=analyzer).ready()
        real = compose.gate.reid.recognizer.detect_boxes
        monkeypatch.setattr(
            compose.gate.reid.recognizer, "detect_boxes", lambda image, real=real: calls.append(1) or real(image)
        )
        tasks = list(shard_tasks(ShardWork(str(shard), shard.name), StorageOptions(), LimitsConfig()))
        faceless = [t for t in Decode(LimitsConfig())(tasks)[1:] if not t.end_of_shard]
        calls.clear()
        compose(faceless)
        assert len(calls) == expected, analyzer
        assert all(t.status.value == "no_face" for t in faceless)


def test_the_audit_records_the_detector_and_recognizer_and_their_weights(
    shard: Path, anonymize: Anonymize, tmp_path: Path
) -> None:
    from raypipe.anonymize.models import files_hash

    run_stages(shard, tmp_path, anonymize)
    record = read_audit((tmp_path / ".raypipe/shards/part-00000.audit.parquet").read_bytes())[0]
    assert record["detector"] == "dlib-hog" and record["recognizer"] == "dlib-hog"
    hashes = json.loads(record["weight_hashes"])
    assert hashes["detector"] == files_hash(anonymize.rp.analyzer.model_files)  # type: ignore[union-attr]
    assert hashes["recognizer"] == hashes["detector"]  # the same dlib files, in this test
    assert {"sdxl", "ip_adapter"} <= set(hashes)
