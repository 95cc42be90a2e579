"""The independent re-identification gate (METHOD.md section 8) and the missed-face check.

After anonymization, every face is compared with its original under a recognizer *other* than the one
that conditioned the diffusion model (production conditions on ArcFace; the default here is dlib's
ResNet from face-recognition-models). A face whose distance to its original is below the threshold
still re-identifies; a face that cannot be compared cannot be vouched for. Either way the sample is
``quarantined`` and never released. Only the distance leaves this module: descriptors are computed,
compared and dropped inside :meth:`ReidGate.check`.

The metric is the recognizer's own calibrated one: dlib documents that two of its raw 128-d descriptors
closer than 0.6 (Euclidean) are the same person, so :data:`DEFAULT_THRESHOLD` is 0.6 and a face passes
only at a distance of 0.6 or more. ``benchmarks/reid_calibration.py`` measured it on every real face
reachable offline (ten faces; 210 genuine pairs: re-encoded, resized, cropped, mirrored, blurred,
relit; 45 pairs of different people): genuine pairs 0.002-0.538, every one below 0.6 (all flagged);
different people 0.629-0.925, none flagged. Cosine on unit-normalised descriptors (the previous rule,
0.90) flagged one pair of different people and separated the two groups 4.4 times worse, because
normalising drops the descriptor's norm. The margin on the impostor side is thin (0.029), so the report
plots each face's distance against that impostor distribution (:func:`calibration`).

Small faces. No threshold protects faces of 25 px: on such thumbnails genuine distances reach 0.78,
beyond the closest different people, while every real face of 35 px or more was flagged. So a face
whose box is smaller than ``audit.min_face_px`` (35) on its shorter side is ``unchecked``: it is not
released, unless ``audit.fallback`` is ``mask``, which leaves no pixel of it (blur and pixelation of a
face that small cannot be verified either). The size is that of the recognizer's own box when its
detector found the face (the calibration measured those boxes), else the analyzer's.

The fallback's re-check is made by the same recognizer that the face failed, on a blurred or pixelated
face: it says that dlib no longer matches it, not that no stronger recognizer could. Pixelation and
blur are known to be attackable by recognizers trained on them; ``mask`` is the fallback that leaves
nothing to attack.

Doubtful detections. A detector may fire on clothing, a logo or a texture. A recognizer's descriptors of
such a region look alike before and after anonymization, so the region would "still re-identify" and
withhold the image, although no identity can leak from a region that is not a face. Every region is
compared all the same (a real face the detectors are unsure of must not pass unverified). One that
fails, or is too small to compare, and that neither detector is sure of (the analyzer's score is below
``audit.non_face_score``, and the recognizer's own detector sees no face there in the *original*, from
the full-image detection the gate makes anyway) is masked, recorded ``obscured`` with the reason, and
does not withhold the image: whether it was a face or not, nothing of it is released.
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

DEFAULT_THRESHOLD = 0.6  # dlib's documented same-person distance on its raw face descriptors
# A face found again in the output counts as one of the anonymized faces when its box overlaps one of
# theirs this much: the bar descriptor() uses to re-find a face, since the detector that looks at the output
# may frame faces differently from the one that found them.
MISSED_IOU = MATCH_IOU

# The analyzer score below which a detection that the gate's own detector does not see is doubtful (it
# is masked if it fails, instead of withholding its image), by the analyzer's name (its prefix). dlib
# HOG scores are SVM margins: the weakest real face of the reference photos scores 0.37 (insightface's
# t1.jpg), a false hit on the astronaut's suit 0.12. insightface's SCRFD scores are probabilities: 0.5
# is insightface's own default cut-off (FaceAnalysis det_thresh), which raypipe lowers to
# models.det_thresh so that weak faces are anonymized too. An analyzer not listed here gets no such
# rule: every one of its detections is verified.
NON_FACE_SCORES = {"dlib": 0.3, "insightface": 0.5}

PASSED = "at or above the threshold"
REIDENTIFIES = "still re-identifies"
UNCHECKED = "could not be checked"


class Recognizer(Protocol):
    """What the gate needs from a recognizer: a name, its detector's boxes of one image, and the raw
    descriptor of the face at a box (framed by the best-overlapping of those boxes, when given), in the
    space where its Euclidean distance is calibrated."""

    name: str

    def detect_boxes(self, image_rgb_uint8: np.ndarray) -> list[Box]: ...

    def descriptor(
        self, image_rgb_uint8: np.ndarray, box: Box, detections: list[Box] | None = None
    ) -> np.ndarray | None: ...


@dataclass(frozen=True)
class FaceCheck:
    """The verdict on one face: the Euclidean distance to the original (None when it could not be
    computed) and why."""

    distance: float | None
    passed: bool
    reason: str  # PASSED, REIDENTIFIES, or UNCHECKED followed by the cause
    threshold: float

    @property
    def face_status(self) -> FaceStatus | None:
        """The audit status of a face that failed the gate, None for one that passed."""
        if self.passed:
            return None
        return FaceStatus.REIDENTIFIED if self.distance is not None else FaceStatus.UNCHECKED


def euclidean(a: np.ndarray, b: np.ndarray) -> float | None:
    """Euclidean distance, or None for vectors that cannot be compared (shape, all zero, not finite)."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    if not (np.any(x) and np.any(y)):  # an all-zero descriptor is a failure, not a face
        return None
    return float(np.linalg.norm(x - y))


class ReidGate:
    """Compares each anonymized face with its original under an independent recognizer.

    ``recognizer``: anything with ``name``, ``detect_boxes(image)`` and
    ``descriptor(image, box, detections)`` (see :class:`Recognizer`; default: a HOG
    :class:`~raypipe.anonymize.analyzers.DlibAnalyzer`, built on first use). ``threshold``: Euclidean
    distance below which a face still re-identifies (default :data:`DEFAULT_THRESHOLD`, dlib's; measure
    another one for another recognizer with ``benchmarks/reid_calibration.py``).
    """

    def __init__(self, recognizer: Recognizer | None = None, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 2.0:
            raise ValueError(f"threshold must be a Euclidean distance in (0, 2], got {threshold}")
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

    def _describe(
        self, image: np.ndarray, box: Box, detections: list[Box] | None
    ) -> tuple[np.ndarray | None, str | None]:
        try:
            descriptor = self.recognizer.descriptor(image, box, detections)
        except Exception as error:  # a recognizer failure on one face is a verdict, not a crash
            return None, f"{type(error).__name__}: {error}"
        return descriptor, None if descriptor is not None else "no descriptor"

    def check_face(
        self,
        original_rgb: np.ndarray,
        anonymized_rgb: np.ndarray,
        box: Box,
        detections: tuple[list[Box] | None, list[Box] | None] = (None, None),
    ) -> FaceCheck:
        """The verdict on the face at ``box`` (see :meth:`check`)."""
        before, error = self._describe(original_rgb, box, detections[0])
        if before is None:
            return FaceCheck(None, False, f"{UNCHECKED}: original face ({error})", self.threshold)
        after, error = self._describe(anonymized_rgb, box, detections[1])
        if after is None:
            return FaceCheck(None, False, f"{UNCHECKED}: anonymized face ({error})", self.threshold)
        distance = euclidean(before, after)
        if distance is None:
            return FaceCheck(None, False, f"{UNCHECKED}: descriptors cannot be compared", self.threshold)
        if distance < self.threshold:
            return FaceCheck(distance, False, REIDENTIFIES, self.threshold)
        return FaceCheck(distance, True, PASSED, self.threshold)

    def check(
        self,
        original_rgb: np.ndarray,
        anonymized_rgb: np.ndarray,
        boxes: Sequence[Box],
        detections: tuple[list[Box] | None, list[Box] | None] = (None, None),
    ) -> list[FaceCheck]:
        """One :class:`FaceCheck` per box, in order: Euclidean distance between the recognizer's
        descriptors of the face at the box before and after anonymization.

        ``detections``: the recognizer's boxes in the original and in the anonymized image, when the
        caller already has them (:meth:`detect`); each face is then framed by its best-overlapping box,
        with no detection per face. Given or not, the descriptors are the same.

        Not passed when the distance is below the threshold ("still re-identifies") or when either
        descriptor cannot be made or compared ("could not be checked"). Both images must have the
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


def calibration() -> dict:
    """The calibration that raypipe ships (``calibration.json``, written by a full run of
    ``benchmarks/reid_calibration.py``): metric, threshold and the impostor distances."""
    import json
    from importlib import resources

    return dict(json.loads(resources.files("raypipe.audit").joinpath("calibration.json").read_text("utf-8")))


def non_face_score(analyzer: str | None, configured: float | None = None) -> float | None:
    """The score bar of the not-a-face rule: ``configured`` (``audit.non_face_score``), else the default
    for the analyzer named ``analyzer`` (see :data:`NON_FACE_SCORES`), else None (no such rule)."""
    if configured is not None:
        return float(configured)
    for prefix, score in NON_FACE_SCORES.items():
        if analyzer is not None and analyzer.startswith(prefix):
            return score
    return None


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
