"""The independent re-identification gate (METHOD.md section 8) and the missed-face check.

After anonymization, every face is compared with its original under a recognizer *other* than the one
that conditioned the diffusion model (production conditions on ArcFace; the default here is dlib's
ResNet from face-recognition-models). A face whose similarity is at or above the threshold still
re-identifies; a face that cannot be compared cannot be vouched for. Either way the sample is
``quarantined`` and never released. Only the similarity score leaves this module: embeddings are
computed, compared and dropped inside :meth:`ReidGate.check`.

Default threshold. dlib documents that two of its 128-d descriptors closer than 0.6 (Euclidean) are
the same person. Those raw descriptors are *not* unit vectors: their norms measured 1.36 to 1.57 on
the seven real faces available offline (insightface's ``t1.jpg`` and ``skimage.data.astronaut()``),
while :class:`~raypipe.anonymize.analyzers.DlibAnalyzer` hands out unit vectors. So the unit-vector
conversion cos = 1 - 0.6²/2 = 0.82 does not apply: on those faces, *different* people score 0.81 to
0.91 after normalisation, and a 0.82 bar would quarantine almost every anonymized face. For raw norms
n1, n2 at distance d, cos = (n1² + n2² - d²) / (2·n1·n2) >= 1 - d² / (2·min(n1, n2)²); with d = 0.6 and
the smallest measured norm 1.35 that is 0.90. :data:`DEFAULT_THRESHOLD` = 0.90 therefore flags every
pair dlib's own rule calls the same person (at the mean norm, 1.49, the equivalent would be 0.92) and
errs towards quarantine for the few distinct-person pairs between 0.90 and 0.92. Measured on the
astronaut's face against itself: identical 1.00, mirrored 0.99, Gaussian blur sigma 2 / 4 / 8 / 16 of
the face box 0.97 / 0.93 / 0.88 / 0.84, box painted flat 0.85 (dlib's face chip still holds hair,
ears and background, so even an erased face scores like a stranger, not like nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raypipe.anonymize.analyzers import MATCH_IOU, FaceAnalyzer, iou
from raypipe.anonymize.faces import Box
from raypipe.logs import get_logger
from raypipe.records import FaceStatus

log = get_logger(__name__)

DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold on its raw face descriptors
DLIB_MIN_DESCRIPTOR_NORM = 1.35  # smallest raw descriptor norm measured on real faces (see module doc)
DEFAULT_THRESHOLD = 0.90  # = 1 - 0.6² / (2 · 1.35²), rounded to two decimals
# A face found again in the output counts as one of the anonymized faces when its box overlaps one of
# theirs this much: the bar embed() uses to re-find a face, since the detector that looks at the output
# may frame faces differently from the one that found them.
MISSED_IOU = MATCH_IOU

PASSED = "below threshold"
REIDENTIFIES = "still re-identifies"
UNCHECKED = "could not be checked"


class Recognizer(Protocol):
    """What the gate needs from a recognizer: a name, its detector's boxes of one image, and an
    embedding of the face at a box (framed by the best-overlapping of those boxes, when given)."""

    name: str

    def detect_boxes(self, image_rgb_uint8: np.ndarray) -> list[Box]: ...

    def embed(
        self, image_rgb_uint8: np.ndarray, box: Box, detections: list[Box] | None = None
    ) -> np.ndarray | None: ...


@dataclass(frozen=True)
class FaceCheck:
    """The verdict on one face: the cosine similarity (None when it could not be computed) and why."""

    similarity: float | None
    passed: bool
    reason: str  # PASSED, REIDENTIFIES, or UNCHECKED followed by the cause
    threshold: float

    @property
    def face_status(self) -> FaceStatus | None:
        """The audit status of a face that failed the gate, None for one that passed."""
        if self.passed:
            return None
        return FaceStatus.REIDENTIFIED if self.similarity is not None else FaceStatus.UNCHECKED


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine similarity, or None for vectors that cannot be compared (shape, zero, not finite)."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        return None
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    if not np.isfinite(norms) or norms <= 1e-12:
        return None
    value = float(x @ y) / norms
    return value if np.isfinite(value) else None


class ReidGate:
    """Compares each anonymized face with its original under an independent recognizer.

    ``recognizer``: anything with ``name``, ``detect_boxes(image)`` and ``embed(image, box, detections)``
    (see :class:`Recognizer`; default: a HOG
    :class:`~raypipe.anonymize.analyzers.DlibAnalyzer`, built on first use). ``threshold``: cosine
    similarity at or above which a face still re-identifies (default :data:`DEFAULT_THRESHOLD`, derived
    for dlib; choose another one for another recognizer).
    """

    def __init__(self, recognizer: Recognizer | None = None, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not -1.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in (-1, 1], got {threshold}")
        if recognizer is None:
            from raypipe.anonymize.analyzers import DlibAnalyzer

            recognizer = DlibAnalyzer()
        self.recognizer = recognizer
        self.threshold = float(threshold)

    @property
    def name(self) -> str:
        """The recognizer's name, for the audit and the manifest."""
        return str(getattr(self.recognizer, "name", type(self.recognizer).__name__))

    def detect(self, image: np.ndarray) -> list[Box]:
        """The recognizer's own detections in ``image`` (one full-image detection)."""
        return list(self.recognizer.detect_boxes(image))

    def _embed(self, image: np.ndarray, box: Box, detections: list[Box] | None) -> tuple[np.ndarray | None, str | None]:
        try:
            embedding = self.recognizer.embed(image, box, detections)
        except Exception as error:  # a recognizer failure on one face is a verdict, not a crash
            return None, f"{type(error).__name__}: {error}"
        return embedding, None if embedding is not None else "no embedding"

    def check_face(
        self,
        original_rgb: np.ndarray,
        anonymized_rgb: np.ndarray,
        box: Box,
        detections: tuple[list[Box] | None, list[Box] | None] = (None, None),
    ) -> FaceCheck:
        """The verdict on the face at ``box`` (see :meth:`check`)."""
        before, error = self._embed(original_rgb, box, detections[0])
        if before is None:
            return FaceCheck(None, False, f"{UNCHECKED}: original face ({error})", self.threshold)
        after, error = self._embed(anonymized_rgb, box, detections[1])
        if after is None:
            return FaceCheck(None, False, f"{UNCHECKED}: anonymized face ({error})", self.threshold)
        similarity = cosine(before, after)
        if similarity is None:
            return FaceCheck(None, False, f"{UNCHECKED}: embeddings cannot be compared", self.threshold)
        if similarity >= self.threshold:
            return FaceCheck(similarity, False, REIDENTIFIES, self.threshold)
        return FaceCheck(similarity, True, PASSED, self.threshold)

    def check(
        self,
        original_rgb: np.ndarray,
        anonymized_rgb: np.ndarray,
        boxes: Sequence[Box],
        detections: tuple[list[Box] | None, list[Box] | None] = (None, None),
    ) -> list[FaceCheck]:
        """One :class:`FaceCheck` per box, in order: cosine similarity of the recognizer's embeddings of
        the face at the box before and after anonymization.

        ``detections``: the recognizer's boxes in the original and in the anonymized image, when the
        caller already has them (:meth:`detect`); each face is then framed by its best-overlapping box,
        with no detection per face. Given or not, the embeddings are the same.

        Not passed when the similarity is at or above the threshold ("still re-identifies") or when
        either embedding cannot be made or compared ("could not be checked"). Both images must have the
        same shape (the anonymized image is the original with faces replaced in place).
        """
        if np.shape(original_rgb) != np.shape(anonymized_rgb):
            raise ValueError(
                f"original {np.shape(original_rgb)} and anonymized {np.shape(anonymized_rgb)} images differ in shape"
            )
        results = [self.check_face(original_rgb, anonymized_rgb, box, detections) for box in boxes]
        failed = sum(not r.passed for r in results)
        if failed:
            log.debug("re-identification gate: %d of %d faces not passed", failed, len(results))
        return results


def missed_faces(
    anonymized_rgb: np.ndarray,
    anonymized_boxes: Sequence[Box],
    detector: FaceAnalyzer | None = None,
    min_iou: float = MISSED_IOU,
    found: Sequence[Box] | None = None,
) -> int:
    """How many faces ``detector`` finds in the output image that overlap no anonymized face box.

    A detection counts as one of the anonymized faces when its IoU with one of ``anonymized_boxes`` is at
    least ``min_iou`` (default :data:`MISSED_IOU`); any other detection is a face that was never
    anonymized. Only boxes are used. ``found``: the detector's boxes in the output, when the caller
    already has them (then ``detector`` is not needed).
    """
    if found is None:
        assert detector is not None, "missed_faces needs a detector or the boxes it found"
        found = [face.box for face in detector.analyze(anonymized_rgb)]
    missed = sum(1 for box in found if not any(iou(box, done) >= min_iou for done in anonymized_boxes))
    if missed:
        log.debug("%d face(s) found in the output where none was anonymized", missed)
    return missed
