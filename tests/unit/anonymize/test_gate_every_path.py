"""One gate on every path that releases an image: the API, ``anonymize-image`` and the job's compose
stage run the same verification, so an anonymizer that hands back the original face is quarantined on
each of them. (Test double: ``anonymize_crops`` returns its input crops, standing in for a broken
anonymizer; everything else is real: tiny diffusion models, dlib detection and dlib's recognizer.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.anonymize.pipeline import Gate, ReversePersonalization
from raypipe.audit.utility import FIELDS as UTILITY_FIELDS
from raypipe.config import AuditConfig, MethodConfig
from raypipe.records import FaceStatus, Status

METHOD = MethodConfig(num_steps=4, face_size=128, seed=7)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _identity(crops, embeddings, seeds, guidance_scale=None, prompt=None):  # type: ignore[no-untyped-def]
    return [np.array(crop, copy=True) for crop in crops]


def test_the_api_quarantines_an_anonymizer_that_returns_the_original(astronaut, monkeypatch) -> None:
    rp = ReversePersonalization.tiny(method=METHOD, analyzer="dlib")
    monkeypatch.setattr(rp, "anonymize_crops", _identity)
    result = rp.anonymize(astronaut, key="astronaut")
    assert result.status is Status.QUARANTINED and result.image is None and result.step == "verify"
    (face,) = result.faces
    assert face.status is FaceStatus.REIDENTIFIED and face.distance is not None
    assert face.distance < face.threshold  # type: ignore[operator]
    # It was retried first (audit.retries: 2), each time pushed harder from the identity.
    assert face.attempts == 3 and face.guidance_scale == METHOD.guidance_scale - 2 * 2.5
    assert "after 3 attempts" in (face.error or "")
    for batch_result in rp.anonymize_batch([astronaut, astronaut], ["a", "b"]):
        assert batch_result.status is Status.QUARANTINED and batch_result.image is None


def test_the_api_releases_a_real_anonymization_with_each_faces_verdict(astronaut) -> None:
    rp = ReversePersonalization.tiny(method=METHOD, analyzer="dlib")
    result = rp.anonymize(astronaut, key="astronaut")
    assert result.status is Status.ANONYMIZED and result.image is not None
    (face,) = result.faces
    assert face.status is FaceStatus.ANONYMIZED
    assert face.distance is not None and face.distance >= face.threshold  # type: ignore[operator]
    # Utility, measured at the same box: random tiny weights move the face, so every delta is a number.
    assert all(getattr(face, name) is not None for name in UTILITY_FIELDS) and face.utility_flags == ()


def test_utility_thresholds_flag_a_face_but_release_it(astronaut) -> None:
    from raypipe.anonymize.pipeline import AnonymizationResult
    from raypipe.config import UtilityConfig
    from raypipe.records import FaceRecord

    rp = ReversePersonalization.tiny(method=METHOD, analyzer="dlib")
    released = rp.anonymize(astronaut, key="astronaut")
    assert released.image is not None
    (face,) = released.faces
    strict = Gate(AuditConfig(), "dlib", utility=UtilityConfig(max_landmark_drift=0.0, max_pose_change_deg=90.0))
    record = FaceRecord(face.index, face.box, face.score, FaceStatus.ANONYMIZED, attempts=1)
    again = strict(astronaut, AnonymizationResult(Status.ANONYMIZED, released.image, [record]))
    assert again.status is Status.ANONYMIZED and again.image is not None  # flagged, never withheld
    (flagged,) = again.faces
    assert flagged.utility_flags == (
        f"landmarks changed {flagged.landmark_drift:.3g}, over utility.max_landmark_drift (0)",
    )


def test_anonymize_image_prints_the_verdict_and_writes_nothing_for_a_failing_face(
    tmp_path: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from raypipe.cli import main

    monkeypatch.setattr(
        ReversePersonalization, "anonymize_crops", lambda self, c, e, s, g=None, prompt=None: _identity(c, e, s)
    )
    src, dst, record = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "in.json"
    Image.fromarray(astronaut).save(src)
    args = ["anonymize-image", str(src), str(dst), "--record", str(record), "--preset", "tiny"]
    code = main([*args, "--analyzer", "dlib", "--steps", "4", "--face-size", "128"])
    out = capsys.readouterr().out
    assert code == 1 and not dst.exists()
    assert "face 0 at [" in out and "reidentified (distance" in out
    written = json.loads(record.read_text())
    assert written["status"] == "quarantined" and written["error_step"] == "verify"
    assert written["output"] is None and written["faces"][0]["status"] == "reidentified"
    assert set(written["faces"][0]) == {
        "index",
        "box",
        "score",
        "status",
        "seed",
        "error",
        "distance",
        "threshold",
        "attempts",
        "guidance_scale",
        *UTILITY_FIELDS,
        "utility_flags",
    }


def test_anonymize_image_record_of_a_released_image(tmp_path: Path, astronaut: np.ndarray) -> None:
    import hashlib

    from raypipe.cli import main

    src, dst, record = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "in.json"
    Image.fromarray(astronaut).save(src)
    args = ["anonymize-image", str(src), str(dst), "--record", str(record), "--preset", "tiny"]
    assert main([*args, "--analyzer", "dlib", "--steps", "4", "--face-size", "128"]) == 0
    written = json.loads(record.read_text())
    assert written["status"] == "anonymized" and written["faces"][0]["distance"] >= 0.6
    assert written["output_sha256"] == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert written["recognizer"].startswith("dlib")


def test_the_job_compose_stage_quarantines_the_original_face(astronaut: np.ndarray) -> None:
    from raypipe.anonymize.analyzers import DlibAnalyzer
    from raypipe.anonymize.pipeline import prepare_faces
    from raypipe.pipeline.stages import Compose
    from raypipe.pipeline.task import ImageWork, SampleTask

    faces = prepare_faces(astronaut, DlibAnalyzer().analyze(astronaut), 128, 7, "astronaut")
    work = ImageWork(member=0, format="PNG", rgb=astronaut, faces=faces, outputs=[f.crop for f in faces])
    task = SampleTask("in.tar", "in.tar", 0, "astronaut", [("astronaut.png", b"...")], "", images=[work])
    (done,) = Compose().ready()([task])
    assert done.status is Status.QUARANTINED and done.error_step == "verify" and done.out_members is None
    assert done.faces[0].status is FaceStatus.REIDENTIFIED


def test_a_recognizer_that_fails_quarantines_instead_of_crashing(astronaut: np.ndarray, monkeypatch) -> None:
    rp = ReversePersonalization.tiny(method=METHOD, analyzer="dlib")

    def broken(image: np.ndarray) -> list:  # type: ignore[type-arg]
        raise RuntimeError("detector crashed")

    monkeypatch.setattr(rp.gate.reid.recognizer, "detect_boxes", broken)
    result = rp.anonymize(astronaut, key="astronaut")
    assert result.status is Status.QUARANTINED and result.image is None and result.step == "verify"
    assert result.faces[0].status is FaceStatus.UNCHECKED and "detector crashed" in (result.faces[0].error or "")


@pytest.mark.parametrize("faces", [1, 6])
def test_the_gate_runs_at_most_two_detections_per_image(faces: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real photos: the astronaut (1 face), insightface's group photo (6): the same verdicts as one
    detection per face, from two full-image detections."""
    from raypipe.anonymize.pipeline import AnonymizationResult
    from raypipe.records import FaceRecord

    image = _group_photo() if faces == 6 else _astronaut_image()
    gate = Gate()
    recognizer = gate.reid.recognizer
    boxes = recognizer.detect_boxes(image)
    assert len(boxes) == faces
    released = image.copy()
    released[::2, ::2] //= 2  # a changed image, so the released one is searched again
    records = [FaceRecord(i, box, 1.0, FaceStatus.ANONYMIZED) for i, box in enumerate(boxes)]
    calls: list[int] = []
    real = recognizer._detect
    monkeypatch.setattr(recognizer, "_detect", lambda img: calls.append(1) or real(img))
    result = gate(image, AnonymizationResult(Status.ANONYMIZED, released, records))
    assert len(calls) == 2
    per_face = gate.reid.check(image, released, boxes)  # the old way: detections for every face
    assert len(calls) == 2 + 2 * faces
    assert [f.distance for f in result.faces] == [c.distance for c in per_face]


def _astronaut_image() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _group_photo() -> np.ndarray:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def _variant(image: np.ndarray, how: str) -> np.ndarray:
    import io

    if how == "mirrored":
        return np.ascontiguousarray(image[:, ::-1])
    if how == "rescaled 0.75x":
        return np.asarray(Image.fromarray(image).resize((384, 384), Image.Resampling.LANCZOS))
    if how == "cropped":
        return np.ascontiguousarray(image[40:400, 60:460])
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=60)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.mark.parametrize("how", ["mirrored", "rescaled 0.75x", "cropped", "recompressed q60"])
def test_the_gate_holds_on_flips_rescales_crops_and_recompressions(
    how: str, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _variant(astronaut, how)
    rp = ReversePersonalization.tiny(method=METHOD, analyzer="dlib", audit=AuditConfig(retries=0))
    real = rp.anonymize(image, key=how)
    assert real.status is Status.ANONYMIZED and [f.status for f in real.faces] == [FaceStatus.ANONYMIZED]
    monkeypatch.setattr(rp, "anonymize_crops", _identity)
    broken = rp.anonymize(image, key=how)
    assert broken.status is Status.QUARANTINED and broken.image is None
    assert [f.status for f in broken.faces] == [FaceStatus.REIDENTIFIED]
