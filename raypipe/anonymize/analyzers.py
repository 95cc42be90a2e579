"""Face analyzers: find every face in an image, with 5 landmarks and an identity embedding.

Two implementations share one interface (:class:`FaceAnalyzer`):

- :class:`InsightFaceAnalyzer` (production): SCRFD detector + ArcFace recognizer, 512-d embeddings. Its
  embedding conditions IP-Adapter-FaceID, so landmarks and embedding come from the same detection.
- :class:`DlibAnalyzer`: dlib HOG/CNN detector, 68-point landmarks, 128-d ResNet descriptor. Being a
  different recognizer, it serves as the independent re-identification check (METHOD.md section 8).

Heavy libraries (dlib, insightface, onnxruntime, cv2) are imported inside constructors and methods so
that importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from raypipe.anonymize.faces import Box, DetectedFace
from raypipe.logs import get_logger

logger = get_logger(__name__)

# embed() re-finds "the face at this box" by overlap; anonymized faces move a little and the two
# analyzers frame faces differently (dlib's HOG boxes are tighter than SCRFD's), so the bar is low.
MATCH_IOU = 0.3


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Finds faces and describes their identity. Landmarks and embeddings never leave memory."""

    name: str
    embedding_dim: int

    def analyze(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        """All faces, sorted left-to-right then top-to-bottom; embeddings from the same detection.

        A face whose embedding fails comes back with ``embedding=None`` and ``embedding_error`` set;
        one bad face never raises.
        """
        ...

    def embed(self, image_rgb_uint8: np.ndarray, box: Box) -> np.ndarray | None:
        """Embedding of the face at or near ``box`` (e.g. after anonymization); None if none can be made."""
        ...


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"image must be an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
    return np.ascontiguousarray(image)


def _normalised(vector: Iterable[float], dim: int) -> tuple[np.ndarray | None, str | None]:
    """L2-normalised float32 copy, or (None, reason) when the vector cannot serve as an identity."""
    values = np.asarray(vector, dtype=np.float64).reshape(-1)
    if values.shape != (dim,):
        return None, f"embedding has {values.size} values, expected {dim}"
    norm = float(np.linalg.norm(values))
    if not np.isfinite(norm) or norm <= 1e-12:
        return None, "embedding is zero or not finite"
    return (values / norm).astype(np.float32), None


def _sort_faces(faces: list[DetectedFace]) -> list[DetectedFace]:
    return sorted(faces, key=lambda face: (face.box[0], face.box[1], face.box[2], face.box[3]))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_match(boxes: list[Box], box: Box) -> int | None:
    """Index of the box overlapping ``box`` most, if it overlaps at least MATCH_IOU."""
    scores = [iou(candidate, box) for candidate in boxes]
    if not scores or max(scores) < MATCH_IOU:
        return None
    return int(np.argmax(scores))


def _describe_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------------------------- dlib


def face_recognition_models_dir() -> Path:
    """The ``models/`` folder of the face-recognition-models package, found without importing it.

    Its ``__init__`` imports ``pkg_resources``, which current setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            "the face-recognition-models package is not installed (pip install face-recognition-models)"
        )
    return Path(locations[0]) / "models"


# dlib's 68-point scheme: 36-41 and 42-47 are the eye contours of the image-left and image-right eye,
# 30 the nose tip, 48 and 54 the mouth corners.
_DLIB_EYES = (range(36, 42), range(42, 48))
_DLIB_NOSE_TIP = 30
_DLIB_MOUTH_CORNERS = (48, 54)


def _five_points_from_68(shape: Any) -> np.ndarray:
    points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float32)
    return np.stack(
        [
            points[list(_DLIB_EYES[0])].mean(axis=0),
            points[list(_DLIB_EYES[1])].mean(axis=0),
            points[_DLIB_NOSE_TIP],
            points[_DLIB_MOUTH_CORNERS[0]],
            points[_DLIB_MOUTH_CORNERS[1]],
        ]
    ).astype(np.float32)


def _rect_to_box(rect: Any) -> Box:
    # dlib rectangles include their right/bottom pixel; boxes here use the outer edge.
    return (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))


class DlibAnalyzer:
    """dlib: HOG (or CNN) detector, 68-point landmarks reduced to 5, 128-d ResNet identity descriptor.

    ``score`` is, for HOG, the detector's SVM margin (distance above its decision threshold: 0 is the
    default cut-off, larger is more confident; not a probability), and for CNN the MMOD confidence.
    ``adjust_threshold`` shifts the HOG cut-off (negative finds more, weaker faces). The default 0.2
    keeps every face of the reference photos (the weakest real face in insightface's ``t1.jpg``
    scores 0.35, also at half size) and drops the spurious 0.12 hit on the astronaut's suit patch.
    """

    embedding_dim = 128

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 1,
        adjust_threshold: float = 0.2,
        models_dir: str | Path | None = None,
    ) -> None:
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        folder = Path(models_dir) if models_dir is not None else face_recognition_models_dir()
        files = {
            "landmarks": folder / "shape_predictor_68_face_landmarks.dat",
            "recognition": folder / "dlib_face_recognition_resnet_model_v1.dat",
        }
        if detector == "cnn":
            files["detector"] = folder / "mmod_human_face_detector.dat"
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"dlib model files missing in {folder}: {', '.join(missing)}")
        self.name = f"dlib-{detector}"
        self.detector = detector
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)
        self.model_files = tuple(str(path) for path in files.values())
        self._hog = dlib.get_frontal_face_detector() if detector == "hog" else None
        self._cnn = dlib.cnn_face_detection_model_v1(str(files["detector"])) if detector == "cnn" else None
        self._predictor = dlib.shape_predictor(str(files["landmarks"]))
        self._recognizer = dlib.face_recognition_model_v1(str(files["recognition"]))
        logger.info("loaded dlib analyzer (%s detector) from %s", detector, folder)

    def _detect(self, image: np.ndarray) -> list[tuple[Any, float]]:
        """(dlib rectangle, score) per detection."""
        if self._hog is not None:
            rects, scores, _ = self._hog.run(image, self.upsample, self.adjust_threshold)
            return [(rect, float(score)) for rect, score in zip(rects, scores)]
        assert self._cnn is not None
        return [(found.rect, float(found.confidence)) for found in self._cnn(image, self.upsample)]

    def _describe(
        self, image: np.ndarray, rect: Any, normalise: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """Landmarks and embedding of the face in ``rect`` (unit vector, or dlib's raw descriptor with
        ``normalise=False``); an embedding failure becomes a reason."""
        shape = self._predictor(image, rect)
        landmarks = _five_points_from_68(shape)
        try:
            descriptor = self._recognizer.compute_face_descriptor(image, shape)
        except Exception as error:  # one bad face becomes audit data, never a failed image
            return landmarks, None, _describe_error(error)
        embedding, reason = _normalised(descriptor, self.embedding_dim)
        if embedding is None or normalise:
            return landmarks, embedding, reason
        return landmarks, np.asarray(descriptor, dtype=np.float32).reshape(-1), None

    def analyze(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        """All faces with 5 landmarks and a unit 128-d embedding (see :class:`FaceAnalyzer`)."""
        image = _check_image(image_rgb_uint8)
        faces = []
        for rect, score in self._detect(image):
            landmarks, embedding, reason = self._describe(image, rect)
            if reason is not None:
                logger.warning("dlib could not embed a detected face: %s", reason)
            faces.append(DetectedFace(_rect_to_box(rect), score, landmarks, embedding, reason))
        return _sort_faces(faces)

    def detect_boxes(self, image_rgb_uint8: np.ndarray) -> list[Box]:
        """The boxes of every face the detector finds (one full-image detection, no landmarks)."""
        return [_rect_to_box(rect) for rect, _ in self._detect(_check_image(image_rgb_uint8))]

    def embed(self, image_rgb_uint8: np.ndarray, box: Box, detections: list[Box] | None = None) -> np.ndarray | None:
        """Unit embedding of the face near ``box`` (see :meth:`descriptor`)."""
        return self._at_box(image_rgb_uint8, box, detections, normalise=True)

    def descriptor(
        self, image_rgb_uint8: np.ndarray, box: Box, detections: list[Box] | None = None
    ) -> np.ndarray | None:
        """dlib's raw 128-d descriptor of the face near ``box``: the vector whose Euclidean distance dlib
        calibrated (< 0.6: same person), which the re-identification gate compares.

        Uses the best-overlapping of ``detections`` (the boxes :meth:`detect_boxes` found in this image;
        detected here when not given); when none overlaps, the landmark model is fitted to ``box``
        itself, so a face that became hard to detect is still compared (the conservative choice for a
        re-identification check). None only when ``box`` misses the image or dlib fails.
        """
        return self._at_box(image_rgb_uint8, box, detections, normalise=False)

    def landmarks68(self, image_rgb_uint8: np.ndarray, box: Box) -> np.ndarray | None:
        """dlib's 68 landmarks (68x2, image pixels) fitted to ``box`` itself (no detection, so two images
        are measured with the same framing); None when ``box`` misses the image."""
        rect = _box_rect(_check_image(image_rgb_uint8).shape, box)
        if rect is None:
            return None
        shape = self._predictor(np.ascontiguousarray(image_rgb_uint8), rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)

    def _at_box(
        self, image_rgb_uint8: np.ndarray, box: Box, detections: list[Box] | None, normalise: bool
    ) -> np.ndarray | None:
        import dlib

        image = _check_image(image_rgb_uint8)
        found = detections if detections is not None else self.detect_boxes(image)
        match = best_match(found, box)
        if match is not None:
            x1, y1, x2, y2 = (round(v) for v in found[match])
            rect = dlib.rectangle(int(x1), int(y1), int(x2) - 1, int(y2) - 1)
        else:
            rect = _box_rect(image.shape, box)
            if rect is None:
                return None
        _, embedding, reason = self._describe(image, rect, normalise)
        if reason is not None:
            logger.warning("dlib could not embed the face near a box: %s", reason)
        return embedding


def _box_rect(shape: tuple[int, ...], box: Box) -> Any:
    """``box`` as a dlib rectangle clipped to an image of ``shape``; None when under 2 px is left."""
    import dlib

    height, width = shape[:2]
    x1, y1 = max(0, round(box[0])), max(0, round(box[1]))
    x2, y2 = min(width, round(box[2])), min(height, round(box[3]))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return dlib.rectangle(int(x1), int(y1), int(x2) - 1, int(y2) - 1)


# ----------------------------------------------------------------------------------------- insightface


def _cuda_active(session: Any) -> bool:
    return "CUDAExecutionProvider" in session.get_providers()


class InsightFaceAnalyzer:
    """SCRFD detector + ArcFace recognizer (512-d ``normed_embedding``) from a folder of .onnx files.

    ``model_dir`` must contain one detection model with 5 keypoints (buffalo_l: ``det_10g.onnx``) and
    one recognition model (buffalo_l: ``w600k_r50.onnx``); other models in the folder are ignored.
    ``providers`` are onnxruntime execution providers (None: insightface's default, CUDA when present).
    """

    embedding_dim = 512

    def __init__(
        self,
        model_dir: str | Path,
        det_thresh: float = 0.1,
        det_size: int = 640,
        providers: list[str] | None = None,
    ) -> None:
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"insightface model folder not found: {folder}")
        if not 0.0 <= det_thresh <= 1.0:
            raise ValueError(f"det_thresh must be in [0, 1], got {det_thresh}")
        if det_size < 32 or det_size % 32:
            raise ValueError(f"det_size must be a positive multiple of 32, got {det_size}")
        self.model_dir = str(folder)
        self.name = f"insightface-{folder.name}"
        self.det_thresh = float(det_thresh)
        self.det_size = int(det_size)
        self._detector, self._recognizer = self._load(folder, providers)
        self.model_files = (str(self._detector.model_file), str(self._recognizer.model_file))
        ctx_id = 0 if _cuda_active(self._detector.session) else -1
        self._detector.prepare(ctx_id, det_thresh=self.det_thresh, input_size=(self.det_size, self.det_size))
        self._recognizer.prepare(ctx_id)
        logger.info(
            "loaded insightface analyzer from %s (detector %s, recognizer %s, ctx_id %d)",
            folder,
            Path(self.model_files[0]).name,
            Path(self.model_files[1]).name,
            ctx_id,
        )

    @staticmethod
    def _load(folder: Path, providers: list[str] | None) -> tuple[Any, Any]:
        """First detection and first recognition model (sorted by file name) that insightface routes."""
        from insightface.model_zoo import get_model

        found: dict[str, Any] = {}
        for path in sorted(folder.glob("*.onnx")):
            model = get_model(str(path), providers=providers)
            task = getattr(model, "taskname", None)
            if task in ("detection", "recognition") and task not in found:
                found[task] = model
        missing = [task for task in ("detection", "recognition") if task not in found]
        if missing:
            raise FileNotFoundError(
                f"insightface model folder {folder} has no {' and no '.join(missing)} model "
                "(expected e.g. buffalo_l's det_10g.onnx and w600k_r50.onnx)"
            )
        if not getattr(found["detection"], "use_kps", False):
            raise ValueError(
                f"detection model {found['detection'].model_file} predicts no keypoints; "
                "alignment needs a 5-keypoint SCRFD model"
            )
        return found["detection"], found["recognition"]

    @classmethod
    def from_name_or_path(cls, spec: str | Path, cache_root: str | Path, **options: Any) -> InsightFaceAnalyzer:
        """Analyzer from a local folder, or from a model-pack name such as ``"buffalo_l"``.

        A name resolves to ``<cache_root>/models/<name>``; when that folder is missing, insightface's
        download helper is tried, which fails offline: pre-stage the unpacked folder there instead.
        Object-store URIs are resolved by the caller, which passes a local folder.
        """
        path = Path(spec).expanduser()
        if path.is_dir():
            return cls(path, **options)
        name = str(spec)
        if "/" in name or "\\" in name or name.endswith(".onnx"):
            raise FileNotFoundError(f"insightface model folder not found: {name}")
        staged = Path(cache_root).expanduser() / "models" / name
        if not staged.is_dir():
            staged = _download_model_pack(name, Path(cache_root).expanduser())
        return cls(staged, **options)

    def _faces(self, bgr: np.ndarray) -> list[tuple[Box, float, np.ndarray]]:
        """(box, score, 5x2 keypoints) per detection."""
        boxes, keypoints = self._detector.detect(bgr, max_num=0, metric="default")
        found = []
        for row, kps in zip(boxes, keypoints):
            box = (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
            found.append((box, float(row[4]), np.asarray(kps, dtype=np.float32).reshape(5, 2)))
        return found

    def _embed_detection(
        self, bgr: np.ndarray, box: Box, score: float, kps: np.ndarray
    ) -> tuple[np.ndarray | None, str | None]:
        from insightface.app.common import Face

        face = Face(bbox=np.asarray(box, dtype=np.float32), kps=kps, det_score=score)
        try:
            raw = self._recognizer.get(bgr, face)
        except Exception as error:  # one bad face becomes audit data (cv2, onnxruntime, skimage errors)
            return None, _describe_error(error)
        return _normalised(raw, self.embedding_dim)

    def analyze(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        """All faces with SCRFD's 5 keypoints and a unit 512-d ArcFace embedding (see ``FaceAnalyzer``)."""
        # insightface works on OpenCV's BGR channel order.
        bgr = np.ascontiguousarray(_check_image(image_rgb_uint8)[:, :, ::-1])
        faces = []
        for box, score, kps in self._faces(bgr):
            embedding, reason = self._embed_detection(bgr, box, score, kps)
            if reason is not None:
                logger.warning("insightface could not embed a detected face: %s", reason)
            faces.append(DetectedFace(box, score, kps, embedding, reason))
        return _sort_faces(faces)

    def embed(self, image_rgb_uint8: np.ndarray, box: Box) -> np.ndarray | None:
        """Embedding of the best-overlapping detection; None when the detector finds no face near ``box``.

        ArcFace needs the detector's keypoints for alignment, so there is no fallback to the bare box:
        callers must treat None as "could not be checked".
        """
        bgr = np.ascontiguousarray(_check_image(image_rgb_uint8)[:, :, ::-1])
        detections = self._faces(bgr)
        match = best_match([found[0] for found in detections], box)
        if match is None:
            return None
        embedding, reason = self._embed_detection(bgr, *detections[match])
        if reason is not None:
            logger.warning("insightface could not embed the face near a box: %s", reason)
        return embedding


def _download_model_pack(name: str, cache_root: Path) -> Path:
    """insightface's own download of a model pack into ``<cache_root>/models/<name>``."""
    from insightface.utils.storage import ensure_available

    target = cache_root / "models" / name
    logger.info("insightface model pack %r not staged at %s; trying insightface's download", name, target)
    try:
        folder = Path(ensure_available("models", name, root=str(cache_root)))
    except Exception as error:  # any network/zip failure means the same thing to the user
        raise RuntimeError(
            f"insightface model pack {name!r} is not available at {target} and could not be downloaded "
            f"({_describe_error(error)}). Pre-stage it: unpack {name}.zip (the .onnx files) into {target}, "
            "or pass the folder path (or an object-store URI) instead of the name."
        ) from error
    if not folder.is_dir():
        raise RuntimeError(f"insightface download of {name!r} produced no folder at {folder}")
    return folder


# --------------------------------------------------------------------------------------------- factory


def _build_insightface(**options: Any) -> FaceAnalyzer:
    if "model_dir" in options:
        return InsightFaceAnalyzer(**options)
    if "model" in options:
        model = options.pop("model")
        cache_root = options.pop("cache_root", "~/.insightface")
        return InsightFaceAnalyzer.from_name_or_path(model, cache_root, **options)
    raise ValueError("the insightface analyzer needs model_dir=<folder> or model=<folder or pack name>")


_ANALYZERS: dict[str, Callable[..., FaceAnalyzer]] = {"dlib": DlibAnalyzer, "insightface": _build_insightface}
EMBEDDING_DIMS = {"dlib": DlibAnalyzer.embedding_dim, "insightface": InsightFaceAnalyzer.embedding_dim}


def build_analyzer(name: str, **options: Any) -> FaceAnalyzer:
    """Build an analyzer by name: ``"dlib"`` (DlibAnalyzer options) or ``"insightface"``.

    For ``"insightface"`` pass ``model_dir=<folder>``, or ``model=<folder or pack name>`` with an
    optional ``cache_root``; other options go to :class:`InsightFaceAnalyzer`.
    """
    try:
        factory = _ANALYZERS[name]
    except KeyError:
        raise ValueError(f"unknown face analyzer {name!r}; choose one of {sorted(_ANALYZERS)}") from None
    return factory(**options)
