"""Utility per face: does the anonymized face still look where it looked, with the same expression?

Reverse Personalization promises to keep pose, expression and gaze while it removes identity. The gate
(:mod:`raypipe.audit.reid`) measures the second half for every face; this module measures the first,
with dlib's 68-point landmark model (offline, and independent of the 5 points insightface gives the
diffusion model in production). Original and released face are measured at the *same* box, so the
numbers compare the faces, not two framings:

- head-pose change: yaw, pitch and roll from ``cv2.solvePnP`` of six landmarks on a generic 3D face
  (:data:`MODEL_POINTS`), in degrees, released minus original;
- landmark drift: the mean displacement of the 68 points over the original's inter-ocular distance;
- eye-openness and mouth-openness change: the eye aspect ratio (mean of both eyes) and the inner-lip
  opening over the mouth's width, released minus original.

Only these deltas leave this module, never the landmarks. A value is None when it cannot be measured
(the landmark fit or the pose solve failed, a degenerate face).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raypipe.anonymize.faces import Box

# A generic face in millimetres (x right, y up, z towards the camera), at the 68-point model's
# nose tip (30), chin (8), outer eye corners (36, 45) and mouth corners (48, 54).
MODEL_POINTS = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, -330.0, -65.0),
        (-225.0, 170.0, -135.0),
        (225.0, 170.0, -135.0),
        (-150.0, -150.0, -125.0),
        (150.0, -150.0, -125.0),
    ]
)
POSE_LANDMARKS = (30, 8, 36, 45, 48, 54)
LEFT_EYE, RIGHT_EYE = tuple(range(36, 42)), tuple(range(42, 48))

FIELDS = ("yaw_change", "pitch_change", "roll_change", "landmark_drift", "eye_change", "mouth_change")


class Landmarker(Protocol):
    def landmarks68(self, image_rgb_uint8: np.ndarray, box: Box) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Utility:
    """How one face changed, released minus original (None: could not be measured)."""

    yaw_change: float | None = None  # degrees
    pitch_change: float | None = None
    roll_change: float | None = None
    landmark_drift: float | None = None  # mean landmark displacement / inter-ocular distance
    eye_change: float | None = None  # eye aspect ratio
    mouth_change: float | None = None  # inner-lip opening / mouth width

    @property
    def pose_change(self) -> float | None:
        """The largest of the three angle changes, in degrees."""
        angles = [abs(a) for a in (self.yaw_change, self.pitch_change, self.roll_change) if a is not None]
        return max(angles) if len(angles) == 3 else None

    def to_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in FIELDS}


def head_pose(points: np.ndarray, shape: Sequence[int]) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees of 68 landmarks in an image of ``shape``, or None.

    A pinhole camera with the focal length of the image's width, centred, no distortion. The angles are
    those of a generic face, so only their changes are meaningful: rotating the image counter-clockwise
    by t degrees changes roll by -t, and mirroring a face flips the sign of its yaw and roll.
    """
    import cv2

    height, width = int(shape[0]), int(shape[1])
    camera = np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])
    image_points = np.asarray(points, dtype=np.float64)[list(POSE_LANDMARKS)]
    # Image y grows downwards; the model's y grows upwards.
    ok, rotation, _ = cv2.solvePnP(
        MODEL_POINTS * np.array([1.0, -1.0, -1.0]), image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return None
    matrix, _ = cv2.Rodrigues(rotation)
    pitch = math.degrees(math.atan2(matrix[2, 1], matrix[2, 2]))
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -matrix[2, 0]))))
    roll = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    values = (yaw, pitch, roll)
    return values if all(math.isfinite(v) for v in values) else None


def _wrap(angle: float) -> float:
    """``angle`` in degrees, brought into (-180, 180]."""
    wrapped = math.fmod(angle + 180.0, 360.0)
    return (wrapped + 360.0 if wrapped <= 0 else wrapped) - 180.0


def eye_openness(points: np.ndarray) -> float | None:
    """The eye aspect ratio (eyelid gaps over eye width), mean of both eyes."""
    ratios = []
    for eye in (LEFT_EYE, RIGHT_EYE):
        p = np.asarray(points, dtype=np.float64)[list(eye)]
        width = float(np.linalg.norm(p[0] - p[3]))
        if width <= 1e-6:
            return None
        ratios.append((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width))
    return float(np.mean(ratios))


def mouth_openness(points: np.ndarray) -> float | None:
    """The inner lips' opening (points 61-67, 62-66, 63-65) over the mouth's width (48-54)."""
    p = np.asarray(points, dtype=np.float64)
    width = float(np.linalg.norm(p[48] - p[54]))
    if width <= 1e-6:
        return None
    gap = np.mean([np.linalg.norm(p[a] - p[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(gap / width)


def inter_ocular(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(p[list(LEFT_EYE)].mean(axis=0) - p[list(RIGHT_EYE)].mean(axis=0)))


def compare(before: np.ndarray | None, after: np.ndarray | None, shape: Sequence[int]) -> Utility:
    """The deltas between two sets of 68 landmarks of one face in images of ``shape``."""
    if before is None or after is None or before.shape != (68, 2) or after.shape != (68, 2):
        return Utility()
    pose_before, pose_after = head_pose(before, shape), head_pose(after, shape)
    angles: list[float | None] = [None, None, None]
    if pose_before is not None and pose_after is not None:
        angles = [round(_wrap(b - a), 3) for a, b in zip(pose_before, pose_after)]
    eyes = inter_ocular(before)
    drift = round(float(np.linalg.norm(after - before, axis=1).mean() / eyes), 5) if eyes > 1e-6 else None
    return Utility(
        yaw_change=angles[0],
        pitch_change=angles[1],
        roll_change=angles[2],
        landmark_drift=drift,
        eye_change=_delta(eye_openness(before), eye_openness(after)),
        mouth_change=_delta(mouth_openness(before), mouth_openness(after)),
    )


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 5)


def measure(landmarker: Landmarker, original: np.ndarray, released: np.ndarray, box: Box) -> Utility:
    """How the face at ``box`` changed from ``original`` to ``released`` (a landmark failure: all None)."""
    try:
        before = landmarker.landmarks68(original, box)
        after = landmarker.landmarks68(released, box)
    except Exception:  # utility is evidence about quality, never a reason to fail an image
        return Utility()
    return compare(before, after, original.shape)
