"""Whole-image anonymization with the tiny preset and the real dlib analyzer (METHOD.md section 7)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from raypipe.anonymize.faces import DetectedFace
from raypipe.anonymize.pipeline import ReversePersonalization
from raypipe.config import AuditConfig, MethodConfig
from raypipe.records import FaceStatus, Status
from tests.helpers import face_regions

METHOD = MethodConfig(num_steps=8, face_size=128, face_batch_size=4)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut())


@pytest.fixture(scope="module")
def rp() -> ReversePersonalization:
    return ReversePersonalization.tiny(method=METHOD, analyzer="dlib")


def test_astronaut_face_is_anonymized_and_nothing_else_changes(rp, astronaut) -> None:
    original = astronaut.copy()
    result = rp.anonymize(astronaut, key="astronaut")
    assert result.status is Status.ANONYMIZED
    assert len(result.faces) == 1 and result.faces[0].status is FaceStatus.ANONYMIZED
    out = result.image
    assert out is not None and out.shape == astronaut.shape and out.dtype == np.uint8
    assert np.array_equal(astronaut, original)  # the input is never modified

    region = face_regions(astronaut, METHOD.face_size)
    assert np.array_equal(out[~region], astronaut[~region])  # byte-identical outside the pasted region
    x1, y1, x2, y2 = (round(v) for v in result.faces[0].box)
    inside = np.abs(out[y1:y2, x1:x2].astype(int) - astronaut[y1:y2, x1:x2].astype(int))
    assert inside.mean() > 5.0  # the face itself changed


def test_same_seed_and_key_give_identical_bytes_and_another_key_other_noise(rp, astronaut) -> None:
    a = rp.anonymize(astronaut, key="k1").image
    b = rp.anonymize(astronaut, key="k1").image
    c = rp.anonymize(astronaut, key="k2").image
    assert a is not None and b is not None and c is not None
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_a_batch_of_faces_equals_the_faces_one_by_one(astronaut) -> None:
    from raypipe.anonymize.faces import align_face

    batched = ReversePersonalization.tiny(
        method=MethodConfig(num_steps=8, face_size=128, face_batch_size=3), analyzer=None
    )
    single = ReversePersonalization(batched.models, None, MethodConfig(num_steps=8, face_size=128, face_batch_size=1))
    rng = np.random.default_rng(0)
    landmarks = np.array([[200, 180], [260, 180], [230, 215], [205, 250], [255, 250]], dtype=np.float32)
    crops = [align_face(astronaut, landmarks + rng.normal(0, 5, (5, 2)).astype(np.float32), 128)[0] for _ in range(3)]
    embeddings = [v / np.linalg.norm(v) for v in rng.normal(size=(3, 512)).astype(np.float32)]
    seeds = [1, 2, 3]
    together = batched.anonymize_crops(crops, embeddings, seeds)
    one_by_one = single.anonymize_crops(crops, embeddings, seeds)
    for a, b in zip(together, one_by_one):
        assert a is not None and b is not None
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # rounding of float round-off at most


def test_no_face_leaves_the_image_unchanged(rp) -> None:
    from skimage.data import coffee

    image = np.ascontiguousarray(coffee())
    result = rp.anonymize(image, key="coffee")
    assert result.status is Status.NO_FACE
    assert result.faces == []
    assert result.image is not None and result.image.tobytes() == image.tobytes()


@dataclass
class _ScriptedAnalyzer:
    """A test double for the detector: returns prepared detections (the real dlib analyzer cannot be
    made to fail on demand). Everything downstream of detection runs for real."""

    faces: list[DetectedFace]
    name: str = "scripted"
    embedding_dim: int = 128
    calls: list[int] = field(default_factory=list)

    def analyze(self, image: np.ndarray) -> list[DetectedFace]:
        return list(self.faces)

    def embed(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        return None


def _face(embedding: np.ndarray | None, error: str | None = None) -> DetectedFace:
    landmarks = np.array([[200, 180], [260, 180], [230, 215], [205, 250], [255, 250]], dtype=np.float32)
    return DetectedFace(
        box=(180.0, 140.0, 280.0, 270.0),
        score=1.0,
        landmarks=landmarks,
        embedding=embedding,
        embedding_error=error,
    )


def test_a_face_that_cannot_be_embedded_quarantines_the_image(rp, astronaut) -> None:
    good = np.ones(128, dtype=np.float32) / np.sqrt(128)
    analyzer = _ScriptedAnalyzer([_face(good), _face(None, "recognizer failed")])
    result = ReversePersonalization(rp.models, analyzer, METHOD).anonymize(astronaut, key="x")
    assert result.status is Status.QUARANTINED
    assert result.image is None  # never released
    assert [f.status for f in result.faces] == [FaceStatus.ANONYMIZED, FaceStatus.NOT_EMBEDDABLE]
    assert "recognizer failed" in (result.error or "")


def test_a_face_whose_result_is_not_finite_quarantines_the_image(rp, astronaut) -> None:
    good = np.ones(128, dtype=np.float32) / np.sqrt(128)
    anonymizer = ReversePersonalization(rp.models, _ScriptedAnalyzer([_face(good)]), METHOD)
    # Fault injection: make the VAE decoder emit NaN, as a numerically broken model would.
    hook = rp.models.vae.decoder.register_forward_hook(lambda m, i, out: out * float("nan"))
    try:
        result = anonymizer.anonymize(astronaut, key="x")
    finally:
        hook.remove()
    assert result.status is Status.QUARANTINED and result.image is None
    assert result.faces[0].status is FaceStatus.ANONYMIZE_ERROR


def test_analyzer_and_projection_dimensions_must_agree(rp) -> None:
    analyzer = _ScriptedAnalyzer([], embedding_dim=512)
    with pytest.raises(
        ValueError, match="512-d identity embeddings but the IP-Adapter-FaceID projection expects 128-d"
    ):
        ReversePersonalization(rp.models, analyzer, METHOD)


def test_cli_anonymize_image(tmp_path, astronaut) -> None:
    from PIL import Image

    from raypipe.cli import main

    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(astronaut).save(src)
    code = main(
        [
            "anonymize-image",
            str(src),
            str(dst),
            "--preset",
            "tiny",
            "--analyzer",
            "dlib",
            "--steps",
            "4",
            "--seed",
            "7",
        ]
    )
    assert code == 0
    out = Image.open(dst)
    assert out.size == (512, 512) and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), astronaut)


def test_cli_rejects_bad_values_naming_them(tmp_path) -> None:
    from raypipe.cli import main

    assert main(["anonymize-image", "in.png", "out.png", "--preset", "tiny", "--skip", "1.5"]) == 2
    assert main(["anonymize-image", str(tmp_path / "missing.png"), "out.png", "--preset", "tiny"]) == 2


def test_each_face_is_anonymized_with_its_own_attribute_prompt(astronaut) -> None:
    from raypipe.anonymize.faces import align_face
    from raypipe.anonymize.pipeline import PreparedFace

    # One face per UNet call, so a face's pixels do not depend on which faces share its calls.
    method = MethodConfig(num_steps=6, face_size=128, face_batch_size=1, attribute_prompt="a child")
    rp = ReversePersonalization.tiny(method=method, analyzer=None, audit=AuditConfig(retries=0))  # no reseeding
    landmarks = np.array([[200, 180], [260, 180], [230, 215], [205, 250], [255, 250]], dtype=np.float32)
    crop, matrix = align_face(astronaut, landmarks, 128)
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    faces = [PreparedFace(i, (0, 0, 1, 1), 1.0, 7, matrix, crop, embedding) for i in range(4)]
    prompts = ["an elderly man", "", "an elderly man", None]  # "": none; None: the job's prompt

    out = rp.anonymize_faces(faces, prompts)
    elderly, none, child = (
        rp.anonymize_crops([crop], [embedding], [7], prompt=p)[0] for p in [*prompts[:2], "a child"]
    )
    assert out[0].tobytes() == out[2].tobytes() == elderly.tobytes()
    assert out[1].tobytes() == none.tobytes() and out[3].tobytes() == child.tobytes()
    assert len({elderly.tobytes(), none.tobytes(), child.tobytes()}) == 3  # the prompt changes the face
    assert rp.text.encoded == 3  # "", "an elderly man", "a child": each encoded once
