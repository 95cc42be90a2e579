"""Face analyzers: real dlib models on real photos; insightface wiring on tiny ONNX models built here."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage import data

from raypipe.anonymize.analyzers import (
    DlibAnalyzer,
    FaceAnalyzer,
    InsightFaceAnalyzer,
    build_analyzer,
    iou,
)
from raypipe.anonymize.faces import FACE_TEMPLATE, DetectedFace, align_face

ASTRONAUT_FACE = (175.0, 76.0, 266.0, 167.0)  # where dlib's HOG finds the face (upsample 1)


def assert_well_formed(face: DetectedFace, dim: int, image_shape: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = face.box
    assert x1 < x2 and y1 < y2
    assert isinstance(face.score, float)
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert face.embedding is not None and face.embedding_error is None
    assert face.embedding.shape == (dim,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert "embedding=" not in repr(face) and "landmarks=" not in repr(face)


# ------------------------------------------------------------------------------------------------- dlib


@pytest.fixture(scope="module")
def dlib_hog() -> DlibAnalyzer:
    # The defaults (upsample=1, adjust_threshold=0.2): a spurious 0.12 hit on the suit patch is cut.
    return DlibAnalyzer()


def test_dlib_finds_the_astronaut_with_plausible_landmarks(dlib_hog: DlibAnalyzer) -> None:
    image = data.astronaut()
    faces = dlib_hog.analyze(image)
    assert len(faces) == 1
    face = faces[0]
    assert_well_formed(face, 128, image.shape)
    assert iou(face.box, ASTRONAUT_FACE) > 0.9
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    assert isinstance(dlib_hog, FaceAnalyzer) and dlib_hog.embedding_dim == 128


def test_dlib_embed_at_a_box_matches_analyze(dlib_hog: DlibAnalyzer) -> None:
    image = data.astronaut()
    face = dlib_hog.analyze(image)[0]
    again = dlib_hog.embed(image, face.box)
    assert again is not None and again.shape == (128,)
    assert float(again @ face.embedding) > 0.99
    # A slightly different box (e.g. from another detector) still finds the same face.
    shifted = (face.box[0] - 8, face.box[1] - 12, face.box[2] + 6, face.box[3] + 10)
    assert float(dlib_hog.embed(image, shifted) @ face.embedding) > 0.99
    assert dlib_hog.embed(image, (600.0, 600.0, 700.0, 700.0)) is None  # off the image


def test_dlib_finds_nothing_without_a_face(dlib_hog: DlibAnalyzer) -> None:
    assert dlib_hog.analyze(data.coffee()) == []
    flat = np.full((240, 320, 3), 128, dtype=np.uint8)
    assert dlib_hog.analyze(flat) == []
    # embed() still describes the region when nothing is detected there: a re-identification check
    # must not be dodged by a face that merely became hard to detect.
    fallback = dlib_hog.embed(flat, (100.0, 60.0, 200.0, 160.0))
    assert fallback is not None and np.linalg.norm(fallback) == pytest.approx(1.0, abs=1e-5)


def test_aligned_astronaut_has_its_eyes_on_the_template(dlib_hog: DlibAnalyzer) -> None:
    face_size = 256
    face = dlib_hog.analyze(data.astronaut())[0]
    crop, _ = align_face(data.astronaut(), face.landmarks, face_size)
    found = dlib_hog.analyze(crop)
    assert len(found) == 1
    # Landmarks re-detected in the crop, not the transformed ones: this proves the crop's content.
    eyes = found[0].landmarks[:2]
    template_eyes = FACE_TEMPLATE[:2] * face_size - 0.5
    assert np.abs(eyes - template_eyes).max() < 8.0  # 3 % of the crop


def test_dlib_on_a_group_photo_sorts_faces_and_tells_people_apart(dlib_hog: DlibAnalyzer) -> None:
    import cv2

    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.origin is not None
    group = cv2.imread(str(Path(spec.origin).parent / "data" / "images" / "t1.jpg"))[:, :, ::-1].copy()
    faces = dlib_hog.analyze(group)
    assert len(faces) == 6
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)
    astronaut = dlib_hog.analyze(data.astronaut())[0].embedding
    embeddings = np.stack([f.embedding for f in faces])
    assert np.all(embeddings @ astronaut < 0.95)  # other people
    similarity = embeddings @ embeddings.T
    assert np.all(similarity[~np.eye(len(faces), dtype=bool)] < 0.95)


def test_dlib_cnn_detector_agrees_with_hog() -> None:
    cnn = DlibAnalyzer(detector="cnn", upsample=0)
    faces = cnn.analyze(data.astronaut())
    assert len(faces) == 1 and cnn.name == "dlib-cnn"
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.5
    assert_well_formed(faces[0], 128, data.astronaut().shape)


class FailingRecognizer:
    def compute_face_descriptor(self, *args: Any) -> None:
        raise RuntimeError("descriptor exploded")

    def get(self, *args: Any) -> None:
        raise RuntimeError("descriptor exploded")


def test_dlib_embedding_failure_is_reported_per_face(dlib_hog: DlibAnalyzer) -> None:
    analyzer = copy.copy(dlib_hog)
    analyzer._recognizer = FailingRecognizer()
    faces = analyzer.analyze(data.astronaut())
    assert len(faces) == 1
    assert faces[0].embedding is None and "descriptor exploded" in (faces[0].embedding_error or "")
    assert faces[0].landmarks.shape == (5, 2)


def test_dlib_missing_model_files_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        DlibAnalyzer(models_dir=tmp_path)
    with pytest.raises(ValueError, match="detector"):
        DlibAnalyzer(detector="yolo")


# ------------------------------------------------------------------------------------------ insightface


def build_tiny_scrfd(path: Path) -> None:
    """A 9-output SCRFD-shaped detector (3 strides x 2 anchors, with keypoints).

    Not random: the score is sigmoid(4 * pooled brightness - 6), so it fires on bright patches only
    (insightface normalises pixels to about [-1, 1]), and boxes/keypoints are fixed offsets in units of
    the stride, so every detection has a face-like 5-point layout.
    """
    from onnx import TensorProto, checker, helper, numpy_helper, save

    kps_offsets = np.array([-0.6, -0.5, 0.6, -0.5, 0.0, 0.0, -0.5, 0.6, 0.5, 0.6], dtype=np.float32)
    nodes, inits = [], []
    outputs: dict[str, list[Any]] = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        pooled = f"pool{stride}"
        window = [stride, stride]
        pool = helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=window, strides=window)
        nodes.append(pool)
        for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
            weight = np.zeros((2 * channels, 3, 1, 1), dtype=np.float32)
            bias = np.zeros(2 * channels, dtype=np.float32)
            if kind == "score":
                weight[:], bias[:] = 4.0, -6.0
            elif kind == "bbox":
                bias[:] = 2.0
            else:
                bias[:] = np.tile(kps_offsets, 2)
            tag = f"{kind}{stride}"
            inits += [
                numpy_helper.from_array(weight, f"w_{tag}"),
                numpy_helper.from_array(bias, f"b_{tag}"),
                numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), f"shape_{tag}"),
            ]
            out = f"out_{tag}"
            flat = f"flat_{tag}" if kind == "score" else out
            nodes += [
                helper.make_node("Conv", [pooled, f"w_{tag}", f"b_{tag}"], [f"conv_{tag}"]),
                helper.make_node("Transpose", [f"conv_{tag}"], [f"nhwc_{tag}"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"nhwc_{tag}", f"shape_{tag}"], [flat]),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [flat], [out]))
            outputs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", channels]))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    save(model, str(path))


def build_tiny_arcface(path: Path) -> None:
    """A random 112x112 -> 512 recognizer: conv, global pooling, linear (so colour balance matters)."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((8, 512)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "conv_w"], ["conv"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", 512])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    save(model, str(path))


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A buffalo_l-like folder holding a tiny detector and recognizer."""
    folder = tmp_path_factory.mktemp("insightface") / "tiny_pack"
    folder.mkdir()
    build_tiny_scrfd(folder / "det_tiny.onnx")
    build_tiny_arcface(folder / "w_tiny.onnx")
    return folder


def tiny_analyzer(folder: Path) -> InsightFaceAnalyzer:
    return InsightFaceAnalyzer(folder, det_thresh=0.5, det_size=128, providers=["CPUExecutionProvider"])


def bright_patch_image() -> np.ndarray:
    image = np.zeros((100, 160, 3), dtype=np.uint8)
    image[30:60, 90:120] = 255
    return image


def test_tiny_models_route_to_scrfd_and_arcface(tiny_pack: Path) -> None:
    from insightface.model_zoo import get_model

    detector = get_model(str(tiny_pack / "det_tiny.onnx"), providers=["CPUExecutionProvider"])
    recognizer = get_model(str(tiny_pack / "w_tiny.onnx"), providers=["CPUExecutionProvider"])
    assert type(detector).__name__ == "SCRFD" and detector.use_kps
    assert type(recognizer).__name__ == "ArcFaceONNX"


def test_insightface_analyzer_loads_a_folder_offline(tiny_pack: Path) -> None:
    analyzer = tiny_analyzer(tiny_pack)
    assert isinstance(analyzer, FaceAnalyzer)
    assert analyzer.embedding_dim == 512 and analyzer.name == "insightface-tiny_pack"
    image = bright_patch_image()
    faces = analyzer.analyze(image)
    assert faces, "the tiny detector fires on the bright patch"
    for face in faces:
        assert_well_formed(face, 512, image.shape)
        centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        assert np.abs(face.landmarks - centre).max() < (face.box[2] - face.box[0])
    keys = [(f.box[0], f.box[1]) for f in faces]
    assert keys == sorted(keys)
    assert analyzer.analyze(np.zeros((64, 64, 3), dtype=np.uint8)) == []


def test_insightface_analyzer_matches_insightfaces_own_pipeline(tiny_pack: Path) -> None:
    # FaceAnalysis on the same folder is the reference wiring (BGR input, detector keypoints feeding the
    # recognizer). The random recognizer weighs colour channels differently, so an RGB/BGR mix-up shows.
    from insightface.app import FaceAnalysis

    image = bright_patch_image()
    image[30:60, 90:120] = (255, 235, 150)  # warm colour: swapping R and B changes it
    reference = FaceAnalysis(name=str(tiny_pack), providers=["CPUExecutionProvider"])
    reference.prepare(ctx_id=-1, det_thresh=0.5, det_size=(128, 128))
    expected = sorted(reference.get(image[:, :, ::-1].copy()), key=lambda f: (f.bbox[0], f.bbox[1]))
    faces = tiny_analyzer(tiny_pack).analyze(image)
    assert len(faces) == len(expected) > 0
    for face, ref in zip(faces, expected):
        np.testing.assert_allclose(face.box, ref.bbox[:4], atol=1e-4)
        np.testing.assert_allclose(face.landmarks, ref.kps, atol=1e-4)
        np.testing.assert_allclose(face.embedding, ref.normed_embedding, atol=1e-5)
    swapped = tiny_analyzer(tiny_pack).analyze(image[:, :, ::-1].copy())
    assert float(swapped[0].embedding @ faces[0].embedding) < 0.99


def test_insightface_embed_matches_analyze_and_misses_cleanly(tiny_pack: Path) -> None:
    analyzer = tiny_analyzer(tiny_pack)
    image = bright_patch_image()
    face = analyzer.analyze(image)[0]
    again = analyzer.embed(image, face.box)
    assert again is not None and float(again @ face.embedding) > 0.999
    assert analyzer.embed(np.zeros_like(image), face.box) is None


def test_insightface_embedding_failure_is_reported_per_face(tiny_pack: Path) -> None:
    analyzer = tiny_analyzer(tiny_pack)
    analyzer._recognizer = FailingRecognizer()
    faces = analyzer.analyze(bright_patch_image())
    assert faces
    assert all(f.embedding is None and "descriptor exploded" in (f.embedding_error or "") for f in faces)


def test_insightface_missing_folder_or_model_names_the_path(tmp_path: Path, tiny_pack: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InsightFaceAnalyzer(missing)
    only_detector = tmp_path / "only_detector"
    only_detector.mkdir()
    (only_detector / "det_tiny.onnx").write_bytes((tiny_pack / "det_tiny.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match=rf"{only_detector}.*recognition"):
        InsightFaceAnalyzer(only_detector, providers=["CPUExecutionProvider"])


def test_from_name_or_path_uses_folders_and_staged_packs(tmp_path: Path, tiny_pack: Path) -> None:
    options = {"det_thresh": 0.5, "det_size": 128, "providers": ["CPUExecutionProvider"]}
    direct = InsightFaceAnalyzer.from_name_or_path(str(tiny_pack), tmp_path, **options)
    assert direct.model_dir == str(tiny_pack)
    staged = tmp_path / "models" / "tiny_pack"
    staged.mkdir(parents=True)
    for onnx_file in tiny_pack.glob("*.onnx"):
        (staged / onnx_file.name).write_bytes(onnx_file.read_bytes())
    by_name = InsightFaceAnalyzer.from_name_or_path("tiny_pack", tmp_path, **options)
    assert by_name.model_dir == str(staged)


def test_from_name_or_path_offline_error_says_how_to_prestage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import insightface.utils.storage as storage

    def offline(*args: Any, **kwargs: Any) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(storage, "ensure_available", offline)
    with pytest.raises(RuntimeError) as caught:
        InsightFaceAnalyzer.from_name_or_path("buffalo_l", tmp_path)
    message = str(caught.value)
    assert "'buffalo_l'" in message and str(tmp_path / "models" / "buffalo_l") in message
    assert "Pre-stage" in message and "network is unreachable" in message


def test_build_analyzer_by_name(tiny_pack: Path) -> None:
    analyzer = build_analyzer(
        "insightface", model_dir=tiny_pack, det_thresh=0.5, det_size=128, providers=["CPUExecutionProvider"]
    )
    assert isinstance(analyzer, InsightFaceAnalyzer)
    with pytest.raises(ValueError, match="dlib"):
        build_analyzer("opencv")
    with pytest.raises(ValueError, match="model_dir"):
        build_analyzer("insightface")


def test_importing_analyzers_is_cheap() -> None:
    code = (
        "import sys, raypipe.anonymize.analyzers\n"
        "heavy = {'dlib', 'insightface', 'cv2', 'onnxruntime', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
